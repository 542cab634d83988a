package verify

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/proto/sevsnp"
	tdxabi "github.com/google/go-tdx-guest/abi"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/hcl"
)

// verifyAzure checks what makes an Azure CVM's vTPM trustworthy: the HCL
// report's hardware report (SEV-SNP report, or the TDX quote made from its
// TDREPORT) through the SNP or TDX verifier, its REPORT_DATA holding
// SHA-256 of the runtime claims, the claims naming the Azure AK, and that AK
// certifying the AK of the quotes over SHA-256(teeNonce ‖ vtpmNonce).
func verifyAzure(r *Result, att *attestpb.Attestation, c *eat.Claims, rs *roots, o Options) error {
	rep, err := hcl.Parse(c.HCLReport)
	if err != nil {
		return fail("azure.hcl", err)
	}
	want := rep.ClaimsHash()
	var rd []byte
	switch rep.Type {
	case hcl.TypeSNP:
		if o.Policy.TDX != nil {
			return mismatch("tdx.policy", "an Azure SEV-SNP VM", "a TDX quote checked against the policy's \"tdx\"")
		}
		hw, err := abi.ReportToProto(rep.Hardware)
		if err != nil {
			return fail("azure.hcl", fmt.Errorf("SEV-SNP report: %w", err))
		}
		snp := att.GetSevSnpAttestation()
		if snp == nil || !proto.Equal(snp.GetReport(), hw) {
			return mismatch("azure.hcl", "an SEV-SNP report differing from the HCL report's", "the HCL report's SEV-SNP report")
		}
		if err := verifySNP(r, &sevsnp.Attestation{Report: hw, CertificateChain: snp.GetCertificateChain()}, rs, o, nil); err != nil {
			return err
		}
		rd = hw.GetReportData()
	case hcl.TypeTDX:
		if o.Policy.SNP != nil {
			return mismatch("snp.policy", "an Azure TDX VM", "an SEV-SNP report checked against the policy's \"policy\"")
		}
		q := att.GetTdxAttestation()
		if q == nil {
			return fail("azure.hcl", errors.New("the Azure TDX evidence has no TDX quote"))
		}
		raw, err := tdxabi.QuoteToAbiBytes(q)
		if err != nil {
			return fail("tdx.decode", err)
		}
		if _, _, err := verifyTDX(r, raw, c, o, nil); err != nil {
			return err
		}
		rd = q.GetTdQuoteBody().GetReportData()
		// The quote must be of the TDREPORT the HCL report holds.
		if !bytes.Equal(rep.ReportData(), rd) {
			return mismatch("azure.hcl", "a TDX quote of another TDREPORT", "a quote of the HCL report's TDREPORT")
		}
	}
	if !bytes.Equal(rd[:32], want[:]) {
		return mismatch("azure.report_data", hexs(rd[:32]), hexs(want[:])+" (SHA-256 of the HCL runtime claims)")
	}
	r.pass("azure.report_data")
	hclAK, err := rep.AK()
	if err != nil {
		return fail("azure.ak", err)
	}
	if err := checkCertify(c.AKCertify, hclAK, att.GetAkPub(), azureBinding(att, c, o)); err != nil {
		return err
	}
	r.pass("azure.ak (certified by the HCL report's AK)")
	return nil
}

// azureBinding is what the Azure AK must have certified the AK over: the
// expected nonces, or without them the token's teeNonce claim and the
// quotes' nonce (binding only: freshness then rests on nothing the caller chose).
func azureBinding(att *attestpb.Attestation, c *eat.Claims, o Options) []byte {
	tee := o.ReportData
	if tee == nil {
		tee = c.ReportData
	}
	t, _ := attest.PadTEENonce(tee)
	var n [attest.VTPMNonceSize]byte
	if o.Nonce != nil {
		n, _ = attest.PadVTPMNonce(o.Nonce)
	} else if q := attest.SHA256Quote(att); q != nil {
		if ad, err := tpm2.DecodeAttestationData(q.GetQuote()); err == nil {
			copy(n[:], ad.ExtraData)
		}
	}
	return attest.AzureBinding(t, n)
}

// checkCertify verifies a TPM2_Certify of akPub (TPMT_PUBLIC) by signer over
// qualifying data.
func checkCertify(cf *eat.Certify, signer *rsa.PublicKey, akPub, qualifying []byte) error {
	if cf == nil {
		return mismatch("azure.ak", "no AK certification", "the AK certified by the HCL report's AK")
	}
	sig, err := tpm2.DecodeSignature(bytes.NewBuffer(cf.Signature))
	if err != nil || sig.RSA == nil {
		return fail("azure.ak", fmt.Errorf("certification signature: not an RSA signature (%v)", err))
	}
	d := sha256.Sum256(cf.Attest)
	if err := rsa.VerifyPKCS1v15(signer, crypto.SHA256, d[:], sig.RSA.Signature); err != nil {
		return fail("azure.ak", fmt.Errorf("certification not signed by the HCL report's AK: %w", err))
	}
	ad, err := tpm2.DecodeAttestationData(cf.Attest)
	if err != nil {
		return fail("azure.ak", err)
	}
	if ad.Magic != 0xff544347 || ad.Type != tpm2.TagAttestCertify || ad.AttestedCertifyInfo == nil {
		return mismatch("azure.ak", fmt.Sprintf("TPMS_ATTEST type %#x", ad.Type), "a TPM-generated certification")
	}
	pub, err := tpm2.DecodePublic(akPub)
	if err != nil {
		return fail("azure.ak", err)
	}
	if ok, err := ad.AttestedCertifyInfo.Name.MatchesPublic(pub); err != nil || !ok {
		return mismatch("azure.ak", "certification of another key", "the AK of the quotes")
	}
	if !bytes.Equal(ad.ExtraData, qualifying) {
		return mismatch("azure.nonce", hexs(ad.ExtraData), hexs(qualifying)+" (SHA-256(teeNonce ‖ vtpmNonce))")
	}
	return nil
}
