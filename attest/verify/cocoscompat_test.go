package verify_test

// Cocos's CLI decodes a token with veraison/go-cose (Sign1Message) and then
// fxamacker/cbor into its claims struct. This test does the same with the
// claim shapes of reference/cocos-protocol.md §5.3, and also checks the
// signature with go-cose's own ES256 verifier.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"testing"

	"github.com/fxamacker/cbor/v2"
	cose "github.com/veraison/go-cose"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
)

type cocosSNP struct {
	Measurement []byte `json:"measurement"`
	TCB         string `json:"tcb"`
	Policy      uint64 `json:"policy"`
	VMPL        int    `json:"vmpl,omitempty"`
	ChipID      []byte `json:"chip_id,omitempty"`
	ReportedTCB uint64 `json:"reported_tcb,omitempty"`
}

type cocosVTPM struct {
	PCRs  map[string]string `json:"pcrs"`
	Quote []byte            `json:"quote,omitempty"`
}

type cocosClaims struct {
	Issuer       string         `cbor:"1,keyasint,omitempty"`
	IssuedAt     int64          `cbor:"6,keyasint,omitempty"`
	ExpiresAt    int64          `cbor:"4,keyasint,omitempty"`
	Nonce        []byte         `cbor:"10,keyasint"`
	UEID         []byte         `cbor:"256,keyasint"`
	OEMID        int            `cbor:"258,keyasint,omitempty"`
	HWModel      []byte         `cbor:"259,keyasint,omitempty"`
	DebugStatus  int            `cbor:"263,keyasint"`
	IntUse       int            `cbor:"262,keyasint,omitempty"`
	Measurements []byte         `cbor:"265,keyasint"`
	Submods      map[string]any `cbor:"266,keyasint,omitempty"`
	SWName       string         `cbor:"270,keyasint,omitempty"`
	PlatformType string         `json:"platform_type"`
	SNP          *cocosSNP      `json:"x-cocos-sevsnp,omitempty"`
	VTPM         *cocosVTPM     `json:"x-cocos-vtpm,omitempty"`
	RawReport    []byte         `json:"raw_report,omitempty"`
	TDX          *cocosTDX      `json:"x-cocos-tdx,omitempty"`
}

type cocosTDX struct {
	MRTD         []byte `json:"tdx_mrtd"`
	RTMR0        []byte `json:"tdx_rtmr0"`
	XFAM         uint64 `json:"tdx_xfam"`
	TDAttributes uint64 `json:"tdx_td_attributes"`
	MRSEAM       []byte `json:"tdx_mrseam"`
}

// TestCocosDecodesOurTDXToken: Cocos's claims struct reads our TDX token's
// x-cocos-tdx, measurements and raw quote.
func TestCocosDecodesOurTDXToken(t *testing.T) {
	_, a := simTDX(t, sim.TDXOptions{XFAM: 0xe7})
	tok, err := a.Attest(attest.Request{ReportData: random(t, 64), Platform: attest.TDX})
	if err != nil {
		t.Fatal(err)
	}
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(tok); err != nil {
		t.Fatal(err)
	}
	var c cocosClaims
	if err := cbor.Unmarshal(msg.Payload, &c); err != nil {
		t.Fatal(err)
	}
	m := sim.DefaultMRTD()
	if c.PlatformType != "TDX" || c.TDX == nil || !bytes.Equal(c.TDX.MRTD, m[:]) || c.TDX.XFAM != 0xe7 || len(c.TDX.RTMR0) != 48 ||
		!bytes.Equal(c.Measurements, m[:]) || c.OEMID != 343 || string(c.HWModel) != "Intel-TDX" || len(c.RawReport) < 0x3fc {
		t.Fatalf("claims %+v", c)
	}
}

func TestCocosDecodesOurToken(t *testing.T) {
	f := newFixture(t, true, &sim.SNPOptions{})
	tee, nonce := random(t, 64), random(t, 32)
	for _, p := range []attest.Platform{attest.SNP, attest.VTPM, attest.SNPvTPM} {
		tok, err := f.a.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: p})
		if err != nil {
			t.Fatal(err)
		}
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(tok); err != nil {
			t.Fatalf("%v: go-cose: %v", p, err)
		}
		var c cocosClaims
		if err := cbor.Unmarshal(msg.Payload, &c); err != nil {
			t.Fatalf("%v: Cocos claims: %v", p, err)
		}
		if c.PlatformType != p.String() || !bytes.Equal(c.Nonce, nonce) || len(c.RawReport) == 0 || c.ExpiresAt != c.IssuedAt+300 {
			t.Fatalf("%v: claims %+v", p, c)
		}
		if (p != attest.VTPM) != (c.SNP != nil && len(c.SNP.Measurement) == 48) || (p != attest.SNP) != (c.VTPM != nil && len(c.VTPM.PCRs) == 24) {
			t.Fatalf("%v: platform claims snp=%+v vtpm=%v", p, c.SNP, c.VTPM != nil)
		}
		// And the signature checks out with go-cose, given our signer claim.
		_, ours := decodeClaims(t, tok)
		pub, err := x509.ParsePKIXPublicKey(ours)
		if err != nil {
			t.Fatal(err)
		}
		v, err := cose.NewVerifier(cose.AlgorithmES256, pub.(*ecdsa.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		if err := msg.Verify(nil, v); err != nil {
			t.Fatalf("%v: go-cose verify: %v", p, err)
		}
	}
}

func decodeClaims(t *testing.T, tok []byte) (any, []byte) {
	c := decode(t, tok)
	return c, c.Signer.Key
}
