// Package eat encodes and decodes the Entity Attestation Tokens that cvmd's
// attestation child returns: a COSE_Sign1 (ES256) over a CBOR claims map with
// Cocos's claim keys and platform_type names, so Cocos's CLI decodes them,
// plus cvmd's own text-keyed claims (x-cvmd-*) that Cocos ignores.
//
// eat only encodes, decodes and checks the COSE signature against a key the
// caller supplies; it does not decide which key to trust or what the evidence
// inside means (that is attest/verify). It has no cgo and no platform access,
// so anyone may import it (the CLI, aTLS, tests).
package eat

import (
	"fmt"
	"time"

	"github.com/cvmd/cvmd/attest/strictcbor"
)

// MinNonceLen is the shortest eat_nonce accepted (RFC 9711 and Cocos).
const MinNonceLen = 8

// Debug status values (RFC 9711 §4.2.9).
const (
	DebugEnabled           = 0
	DebugDisabled          = 1
	DebugDisabledSinceBoot = 2
)

// OEM IDs (IANA PENs) used in claim 258, as Cocos sets them.
const (
	OEMAMD   = 3704
	OEMIntel = 343
)

// Claims is the token payload. Integer keys and text keys follow Cocos's
// claim table (docs/attestation.md repeats it); fields without omitempty are
// always present, as Cocos encodes them.
type Claims struct {
	Issuer       string         `cbor:"1,keyasint,omitempty"`
	Subject      string         `cbor:"2,keyasint,omitempty"`
	ExpiresAt    int64          `cbor:"4,keyasint,omitempty"`
	IssuedAt     int64          `cbor:"6,keyasint,omitempty"`
	Nonce        []byte         `cbor:"10,keyasint"`
	UEID         []byte         `cbor:"256,keyasint"`
	OEMID        int            `cbor:"258,keyasint,omitempty"`
	HWModel      []byte         `cbor:"259,keyasint,omitempty"`
	HWVersion    string         `cbor:"260,keyasint,omitempty"`
	IntUse       int            `cbor:"262,keyasint,omitempty"`
	DebugStatus  int            `cbor:"263,keyasint"`
	Measurements []byte         `cbor:"265,keyasint"`
	Submods      map[string]any `cbor:"266,keyasint,omitempty"`
	SWName       string         `cbor:"270,keyasint,omitempty"`
	SWVersion    string         `cbor:"271,keyasint,omitempty"`

	// PlatformType is one of SNP, TDX, vTPM, SNP-vTPM, Azure, NoCC.
	PlatformType string `cbor:"platform_type"`
	SNP          *SNP   `cbor:"x-cocos-sevsnp,omitempty"`
	VTPM         *VTPM  `cbor:"x-cocos-vtpm,omitempty"`
	TDX          *TDX   `cbor:"x-cocos-tdx,omitempty"`
	RawReport    []byte `cbor:"raw_report,omitempty"`
	Simulated    bool   `cbor:"x-cvmd-simulated,omitempty"`
	// ReportData is the (padded) teeNonce of an SNP-vTPM token, so a verifier
	// that did not send it can still check the AK binding.
	ReportData []byte   `cbor:"x-cvmd-report-data,omitempty"`
	Signer     *Signing `cbor:"x-cvmd-signer,omitempty"`
	// EventLog is cvmd's measurement log (attest.EventLog, CBOR), replayable
	// against PCR 15 and PCR 16 of the quote in RawReport.
	EventLog []byte `cbor:"x-cvmd-eventlog,omitempty"`
	// BootID names the VM boot the token comes from (the supervisor's boot
	// event in PCR 15's log): a verifier that knows the boot refuses a token
	// of an earlier one.
	BootID string `cbor:"x-cvmd-boot-id,omitempty"`
	// TDXCollateral is, on a simulated TDX only, the intelpcs bundle of the
	// simulated platform (a verifier allowing simulated evidence may use it
	// when given none; real collateral always comes from the verifier).
	TDXCollateral []byte `cbor:"x-cvmd-tdx-collateral,omitempty"`
	// HCLReport is, on Azure, the paravisor's report read from the vTPM
	// (attest/hcl): the hardware report and the runtime claims naming the
	// Azure AK.
	HCLReport []byte `cbor:"x-cvmd-hcl-report,omitempty"`
	// AKCertify is, on Azure, the Azure AK's certification of the AK that
	// quotes and signs this token.
	AKCertify *Certify `cbor:"x-cvmd-ak-certify,omitempty"`
}

// Certify is a TPM2_Certify result: a TPMS_ATTEST and its TPMT_SIGNATURE.
type Certify struct {
	Attest    []byte `cbor:"attest"`
	Signature []byte `cbor:"signature"`
}

// TDX mirrors Cocos's x-cocos-tdx claims, read from the TD quote body.
type TDX struct {
	MRTD          []byte `cbor:"tdx_mrtd"`
	RTMR0         []byte `cbor:"tdx_rtmr0"`
	RTMR1         []byte `cbor:"tdx_rtmr1"`
	RTMR2         []byte `cbor:"tdx_rtmr2"`
	RTMR3         []byte `cbor:"tdx_rtmr3"`
	XFAM          uint64 `cbor:"tdx_xfam"`          // little-endian in the quote
	TDAttributes  uint64 `cbor:"tdx_td_attributes"` // little-endian in the quote
	MRConfigID    []byte `cbor:"tdx_mrconfigid"`
	MROwner       []byte `cbor:"tdx_mrowner"`
	MROwnerConfig []byte `cbor:"tdx_mrownerconfig"`
	MRSEAM        []byte `cbor:"tdx_mrseam"`
	Signature     []byte `cbor:"tdx_signature,omitempty"`
}

// SNP mirrors Cocos's x-cocos-sevsnp claims, read from the SNP report.
type SNP struct {
	Measurement   []byte `cbor:"measurement"`
	TCB           string `cbor:"tcb"`
	PlatformInfo  uint64 `cbor:"platform_info"`
	Policy        uint64 `cbor:"policy"`
	FamilyID      []byte `cbor:"family_id,omitempty"`
	ImageID       []byte `cbor:"image_id,omitempty"`
	VMPL          int    `cbor:"vmpl,omitempty"`
	SignatureAlgo int    `cbor:"signature_algo,omitempty"`
	CurrentTCB    uint64 `cbor:"current_tcb,omitempty"`
	ReportedTCB   uint64 `cbor:"reported_tcb,omitempty"`
	ChipID        []byte `cbor:"chip_id,omitempty"`
	CommittedTCB  uint64 `cbor:"committed_tcb,omitempty"`
	LaunchTCB     uint64 `cbor:"launch_tcb,omitempty"`
	Signature     []byte `cbor:"signature,omitempty"`
}

// VTPM mirrors Cocos's x-cocos-vtpm claims. PCRs maps "sha256:<index>" to
// hex; Quote is the SHA-256 bank's TPMS_ATTEST.
type VTPM struct {
	PCRs     map[string]string `cbor:"pcrs"`
	EventLog []byte            `cbor:"event_log,omitempty"`
	Quote    []byte            `cbor:"quote,omitempty"`
}

// Signing says which key signed the token and how a verifier can trust it.
type Signing struct {
	// Kind is SignerTPMAK (the TPM attestation key in RawReport signed the
	// token), SignerSNPKeyReport or SignerTDXKeyQuote (an ephemeral P-256 key
	// whose SHA-512 binding is the REPORT_DATA of KeyReport).
	Kind string `cbor:"kind"`
	// Key is the PKIX DER of the signing public key.
	Key []byte `cbor:"key"`
	// KeyReport is a marshalled sevsnp.Attestation (SignerSNPKeyReport) or
	// a raw TDX quote (SignerTDXKeyQuote).
	KeyReport []byte `cbor:"key_report,omitempty"`
}

// Signer kinds.
const (
	SignerTPMAK        = "tpm-ak"
	SignerSNPKeyReport = "snp-key-report"
	SignerTDXKeyQuote  = "tdx-key-quote"
)

// Token validity, as Cocos: iat + 5 minutes.
const Validity = 5 * time.Minute

// MaxValidity is the longest exp − iat a verifier accepts.
const MaxValidity = time.Hour

// Encode sets iss/iat/exp, marshals claims deterministically and signs them.
func Encode(c *Claims, issuer string, now time.Time, sign Signer) ([]byte, error) {
	if len(c.Nonce) < MinNonceLen {
		return nil, fmt.Errorf("eat: eat_nonce is %d bytes, want at least %d", len(c.Nonce), MinNonceLen)
	}
	c.Issuer = issuer
	c.IssuedAt = now.Unix()
	c.ExpiresAt = now.Add(Validity).Unix()
	payload, err := marshal(c)
	if err != nil {
		return nil, fmt.Errorf("eat: encoding claims: %w", err)
	}
	return SignSign1(payload, []byte(issuer), sign)
}

// Decode parses a token and its claims without checking the signature: the
// caller must then call Verify on the returned Sign1 with a key it trusts.
func Decode(token []byte) (*Sign1, *Claims, error) {
	m, err := ParseSign1(token)
	if err != nil {
		return nil, nil, err
	}
	var c Claims
	if err := strictcbor.Unmarshal(m.Payload, &c); err != nil {
		return nil, nil, fmt.Errorf("eat: decoding claims: %w", err)
	}
	return m, &c, nil
}
