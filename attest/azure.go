package attest

import (
	"crypto/sha256"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/proto/sevsnp"
	attestpb "github.com/google/go-tpm-tools/proto/attest"

	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/hcl"
)

// AzureVM is what an Azure confidential VM adds to its vTPM: the paravisor's
// HCL report in NV (hcl.ReportNVIndex) and the AK its runtime claims name
// (hcl.AKHandle).
type AzureVM struct {
	// SNPCerts returns the VCEK chain of an SEV-SNP report, nil = none in
	// the evidence (on Azure it comes from the host's THIM endpoint, which
	// the attestation child cannot reach: the verifier's AMD bundle must
	// then hold the VCEK).
	SNPCerts func() *sevsnp.CertificateChain
	// TDXQuote turns the HCL's TDREPORT into a signed quote; nil = not
	// available (on Azure the quote comes from the host's IMDS endpoint,
	// which the attestation child cannot reach).
	TDXQuote func(tdreport []byte) ([]byte, error)
}

// AzureBinding is the value the Azure AK certifies our AK over:
// SHA-256(teeNonce(64) ‖ vtpmNonce(32)), so both nonces are bound to the
// vTPM the HCL report names.
func AzureBinding(tee [TEENonceSize]byte, nonce [VTPMNonceSize]byte) []byte {
	h := sha256.New()
	h.Write(tee[:])
	h.Write(nonce[:])
	return h.Sum(nil)
}

// azureEvidence reads the HCL report and builds the Azure attestation:
// the vTPM quotes over nonce with the hardware report (SNP) or its quote
// (TDX) inside, the HCL report and the Azure AK's certification of our AK.
// Precondition: a.TPM and a.Azure set.
func (a *Attester) azureEvidence(c *eat.Claims, tee [TEENonceSize]byte, nonce [VTPMNonceSize]byte) (*attestpb.Attestation, error) {
	raw, err := a.TPM.ReadNV(hcl.ReportNVIndex)
	if err != nil {
		return nil, fmt.Errorf("attest: Azure HCL report: %w", err)
	}
	rep, err := hcl.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("attest: Azure HCL report: %w", err)
	}
	att, err := a.TPM.Attest(nonce[:], nil, nil)
	if err != nil {
		return nil, err
	}
	switch rep.Type {
	case hcl.TypeSNP:
		r, err := abi.ReportToProto(rep.Hardware)
		if err != nil {
			return nil, fmt.Errorf("attest: Azure SEV-SNP report: %w", err)
		}
		sa := &sevsnp.Attestation{Report: r}
		if a.Azure.SNPCerts != nil {
			sa.CertificateChain = a.Azure.SNPCerts()
		}
		att.TeeAttestation = &attestpb.Attestation_SevSnpAttestation{SevSnpAttestation: sa}
		SNPClaims(c, r)
	case hcl.TypeTDX:
		if a.Azure.TDXQuote == nil {
			return nil, fmt.Errorf("%w: Azure TDX quotes come from the host's IMDS endpoint, which the attestation child cannot reach", ErrUnimplemented)
		}
		qb, err := a.Azure.TDXQuote(rep.Hardware)
		if err != nil {
			return nil, fmt.Errorf("attest: Azure TDX quote: %w", err)
		}
		q, err := ParseTDXQuote(qb)
		if err != nil {
			return nil, err
		}
		att.TeeAttestation = &attestpb.Attestation_TdxAttestation{TdxAttestation: q}
		TDXClaims(c, q)
		if a.Simulated && a.TDXCollateral != nil {
			c.TDXCollateral = a.TDXCollateral()
		}
	}
	ca, cs, err := a.TPM.CertifyAK(hcl.AKHandle, AzureBinding(tee, nonce))
	if err != nil {
		return nil, err
	}
	c.HCLReport, c.AKCertify = raw, &eat.Certify{Attest: ca, Signature: cs}
	c.ReportData = tee[:]
	return att, nil
}

// HasAzure reports whether rw's TPM holds an Azure HCL report.
func (t *TPM) HasAzure() bool {
	_, err := t.ReadNV(hcl.ReportNVIndex)
	return err == nil
}
