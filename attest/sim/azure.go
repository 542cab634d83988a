package sim

import (
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/cvmd/cvmd/attest/hcl"
)

// A simulated Azure confidential VM: the TPM simulator provisioned as
// Azure's paravisor provisions a CVM's vTPM — an RSA attestation key at
// hcl.AKHandle and, in hcl.ReportNVIndex, an HCL report whose hardware
// report (from the simulated SEV-SNP or TDX, test-only signers) carries
// SHA-256 of runtime claims naming that key.

// ProvisionAzureSNP provisions rw with an HCL report of s.
func ProvisionAzureSNP(rw io.ReadWriter, s *SNP) error {
	_, err := provisionAzure(rw, hcl.TypeSNP, func(rd [64]byte) ([]byte, error) {
		raw, err := s.GetRawQuote(rd)
		if err != nil {
			return nil, err
		}
		return raw[:abi.ReportSize], nil
	})
	return err
}

// ProvisionAzureTDX provisions rw with an HCL report holding a TDREPORT of t.
func ProvisionAzureTDX(rw io.ReadWriter, t *TDX) error {
	_, err := ProvisionAzureTDXParavisor(rw, t)
	return err
}

// ProvisionAzureTDXParavisor is ProvisionAzureTDX, and returns the
// simulated paravisor that makes the CVM's next HCL reports.
func ProvisionAzureTDXParavisor(rw io.ReadWriter, t *TDX) (*AzureParavisor, error) {
	return provisionAzure(rw, hcl.TypeTDX, func(rd [64]byte) ([]byte, error) { return t.TDReport(rd), nil })
}

// SNPCertChain returns the simulated chip's VCEK chain, as Azure's host
// serves it (THIM).
func (s *SNP) SNPCertChain() *sevsnp.CertificateChain {
	return &sevsnp.CertificateChain{VcekCert: s.chain.vcek.Raw, AskCert: s.chain.ask.Raw, ArkCert: s.chain.ark.Raw}
}

// AzureParavisor stands for Azure's paravisor (the HCL) of a simulated CVM:
// it makes the HCL report, whose runtime claims name the vTPM's AK and
// carry the user data the guest asked for (on Azure the guest writes it to
// hcl.UserDataNVIndex and the HCL refreshes hcl.ReportNVIndex), and whose
// hardware report's REPORTDATA[0:32] is SHA-256 of those claims.
type AzureParavisor struct {
	typ      uint32
	akPub    *rsa.PublicKey
	hardware func([64]byte) ([]byte, error)
}

// Report makes an HCL report whose runtime claims carry userData (as hex,
// Azure's "user-data").
func (p *AzureParavisor) Report(userData [64]byte) ([]byte, error) {
	jwk := hcl.RSAJWK("HCLAkPub", p.akPub)
	jwk.KeyOps = nil
	claims, err := json.Marshal(map[string]any{
		"keys":             []hcl.JWK{jwk},
		"vm-configuration": map[string]any{"console-enabled": false, "secure-boot": true, "tpm-enabled": true, "vmUniqueId": "cvmd-simulated-azure-vm"},
		"user-data":        hex.EncodeToString(userData[:]),
	})
	if err != nil {
		return nil, err
	}
	var rd [64]byte
	h := sha256.Sum256(claims)
	copy(rd[:], h[:])
	hw, err := p.hardware(rd)
	if err != nil {
		return nil, err
	}
	return hcl.Build(p.typ, hw, claims)
}

func provisionAzure(rw io.ReadWriter, typ uint32, hardware func([64]byte) ([]byte, error)) (*AzureParavisor, error) {
	ak, err := client.NewCachedKey(rw, tpm2.HandleEndorsement, client.AKTemplateRSA(), hcl.AKHandle)
	if err != nil {
		return nil, fmt.Errorf("sim: Azure AK at %#x: %w", hcl.AKHandle, err)
	}
	pub, ok := ak.PublicKey().(*rsa.PublicKey)
	ak.Close()
	if !ok {
		return nil, fmt.Errorf("sim: Azure AK is %T, want RSA", ak.PublicKey())
	}
	p := &AzureParavisor{typ: typ, akPub: pub, hardware: hardware}
	report, err := p.Report([64]byte{})
	if err != nil {
		return nil, err
	}
	idx := tpmutil.Handle(hcl.ReportNVIndex)
	attrs := tpm2.AttrOwnerWrite | tpm2.AttrOwnerRead | tpm2.AttrAuthRead | tpm2.AttrNoDA
	if err := tpm2.NVDefineSpace(rw, tpm2.HandleOwner, idx, "", "", nil, attrs, uint16(len(report))); err != nil {
		return nil, fmt.Errorf("sim: defining the HCL report NV index (%d bytes): %w", len(report), err)
	}
	for off := 0; off < len(report); off += 1024 {
		end := min(off+1024, len(report))
		if err := tpm2.NVWrite(rw, tpm2.HandleOwner, idx, "", report[off:end], uint16(off)); err != nil {
			return nil, fmt.Errorf("sim: writing the HCL report: %w", err)
		}
	}
	return p, nil
}

// TDReport returns a TDREPORT (0x400 bytes) over reportData: REPORTMACSTRUCT
// with REPORTDATA at 0x80, TDINFO at 0x200 with the TD's registers. Its MAC
// is not computed: only the TDX module could check it, and the verifier
// checks the quote made from it.
func (t *TDX) TDReport(reportData [64]byte) []byte {
	r := make([]byte, hcl.TDReportSize)
	r[0] = 0x81 // report type: TDX
	copy(r[0x80:], reportData[:])
	b := t.body
	info := r[0x200:]
	copy(info[0x00:], b.GetTdAttributes())
	copy(info[0x08:], b.GetXfam())
	copy(info[0x10:], b.GetMrTd())
	copy(info[0x40:], b.GetMrConfigId())
	copy(info[0x70:], b.GetMrOwner())
	copy(info[0xA0:], b.GetMrOwnerConfig())
	for i, m := range b.GetRtmrs() {
		copy(info[0xD0+48*i:], m)
	}
	return r
}

// QuoteTDReport is the simulated host quoting service (Azure's IMDS
// /acc/tdquote): a quote of the TD whose TDREPORT this is.
func (t *TDX) QuoteTDReport(tdreport []byte) ([]byte, error) {
	if len(tdreport) != hcl.TDReportSize {
		return nil, fmt.Errorf("sim: TDREPORT of %d bytes, want %d", len(tdreport), hcl.TDReportSize)
	}
	var rd [64]byte
	copy(rd[:], tdreport[0x80:0xC0])
	return t.GetRawQuote(rd)
}
