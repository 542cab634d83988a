package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/proto/sevsnp"
	attestpb "github.com/google/go-tpm-tools/proto/attest"

	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/hcl"
	"github.com/cvmd/cvmd/attest/maa"
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
	// RefreshHCL waits until the paravisor has made a new HCL report in
	// hcl.ReportNVIndex after the guest wrote the user data for it to
	// hcl.UserDataNVIndex; nil = not available. (On Azure the HCL does it
	// on its own and the guest waits, AZURE_HCL_REFRESH_WAIT in Cocos; that
	// path also needs the host's quoting service and is not implemented.
	// The simulated CVM's paravisor is attest/sim's AzureParavisor.)
	RefreshHCL func() error

	tokenMu sync.Mutex // one refreshed report at a time (AzureTokenEvidence)
}

// AzureTokenEvidence is what Microsoft Azure Attestation's TdxVm endpoint
// takes for a token over nonce (≤ 32 bytes, zero-padded to 32 as Cocos
// does): the TD quote of the HCL report refreshed with user data
// SHA-256(nonce) zero-padded to 64 bytes, and that report's runtime claims
// (whose SHA-256 is the TDREPORT's REPORTDATA[0:32], checked here, and
// which carry the user data, checked too). MAA binds the token to both.
func (a *Attester) AzureTokenEvidence(nonce []byte) (quote, claims []byte, err error) {
	if len(nonce) > maa.NonceSize {
		return nil, nil, fmt.Errorf("%w: token nonce has %d bytes, at most %d", ErrBadRequest, len(nonce), maa.NonceSize)
	}
	if a.TPM == nil || a.Azure == nil {
		return nil, nil, fmt.Errorf("%w: not an Azure confidential VM (no HCL report in the vTPM)", ErrUnsupportedPlatform)
	}
	az := a.Azure
	if _, cur, err := a.azureHCL(); err != nil {
		return nil, nil, err
	} else if cur.Type != hcl.TypeTDX {
		return nil, nil, fmt.Errorf("%w: MAA tokens of Azure SEV-SNP (MAA's AzureGuest endpoint needs the host's THIM certificates and TPM key certifications)", ErrUnimplemented)
	}
	if az.RefreshHCL == nil || az.TDXQuote == nil {
		return nil, nil, fmt.Errorf("%w: MAA tokens of Azure TDX on hardware: the TD quote comes from the host's IMDS service (/acc/tdquote), which the attestation child cannot reach", ErrUnimplemented)
	}
	userData := maa.UserData(nonce)
	az.tokenMu.Lock()
	defer az.tokenMu.Unlock()
	// As on Azure (and Cocos): the user data goes to the HCL's NV index,
	// the paravisor makes a new report carrying it in its runtime claims.
	if err := a.TPM.WriteNV(hcl.UserDataNVIndex, userData[:], true); err != nil {
		return nil, nil, fmt.Errorf("attest: Azure HCL user data: %w", err)
	}
	if err := az.RefreshHCL(); err != nil {
		return nil, nil, fmt.Errorf("attest: refreshing the Azure HCL report: %w", err)
	}
	_, rep, err := a.azureHCL()
	if err != nil {
		return nil, nil, err
	}
	if rep.Type != hcl.TypeTDX {
		return nil, nil, fmt.Errorf("attest: Azure HCL report: the refreshed report is of type %d, not TDX", rep.Type)
	}
	ch := sha256.Sum256(rep.ClaimsJSON)
	if !bytes.Equal(rep.Hardware[tdReportDataOffset:tdReportDataOffset+32], ch[:]) {
		return nil, nil, errors.New("attest: Azure HCL report: REPORTDATA is not SHA-256 of its runtime claims")
	}
	if rep.Claims.UserData != hex.EncodeToString(userData[:]) {
		return nil, nil, errors.New("attest: Azure HCL report: its runtime claims do not carry the token nonce's user data")
	}
	if quote, err = az.TDXQuote(rep.Hardware); err != nil {
		return nil, nil, fmt.Errorf("attest: Azure TDX quote: %w", err)
	}
	return quote, rep.ClaimsJSON, nil
}

// azureHCL reads and parses the HCL report in the vTPM.
func (a *Attester) azureHCL() (raw []byte, rep *hcl.Report, err error) {
	if raw, err = a.TPM.ReadNV(hcl.ReportNVIndex); err != nil {
		return nil, nil, fmt.Errorf("attest: Azure HCL report: %w", err)
	}
	if rep, err = hcl.Parse(raw); err != nil {
		return nil, nil, fmt.Errorf("attest: Azure HCL report: %w", err)
	}
	return raw, rep, nil
}

// tdReportDataOffset is where REPORTDATA is in a TDREPORT (REPORTMACSTRUCT).
const tdReportDataOffset = 0x80

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
	raw, rep, err := a.azureHCL()
	if err != nil {
		return nil, err
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
