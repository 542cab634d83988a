package verify_test

import (
	"bytes"
	"encoding/base64"
	"testing"
	"time"

	"github.com/google/go-sev-guest/proto/check"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/corim"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

func simTDX(t testing.TB, o sim.TDXOptions) (*sim.TDX, *attest.Attester) {
	t.Helper()
	s, err := sim.NewTDX(o)
	if err != nil {
		t.Fatal(err)
	}
	return s, &attest.Attester{TDX: s, TDXCollateral: s.Collateral, Simulated: true}
}

func TestTDX(t *testing.T) {
	s, a := simTDX(t, sim.TDXOptions{RTMRs: [4][48]byte{{1}, {2}}})
	tee, nonce := random(t, 64), random(t, 32)
	tok, err := a.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: attest.TDX})
	if err != nil {
		t.Fatal(err)
	}
	c := decode(t, tok)
	mrtd := sim.DefaultMRTD()
	if c.PlatformType != "TDX" || c.TDX == nil || !bytes.Equal(c.TDX.MRTD, mrtd[:]) || !bytes.Equal(c.Measurements, mrtd[:]) ||
		c.OEMID != eat.OEMIntel || string(c.HWModel) != "Intel-TDX" || !c.Simulated || len(c.TDXCollateral) == 0 {
		t.Fatalf("claims %+v", c)
	}
	o := verify.Options{ReportData: tee, Nonce: nonce, AllowSimulated: true}
	r, err := verify.Token(tok, o)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Simulated || r.TDX == nil {
		t.Fatalf("result %+v", r)
	}
	for _, want := range []string{"tdx.chain", "tdx.signature", "tdx.tcb", "tdx.report_data", "tdx.policy", "eat.signer", "eat.signature"} {
		if !contains(r.Checks, want) {
			t.Errorf("check %s did not run: %v", want, r.Checks)
		}
	}
	// The verifier's own collateral and root, as a real TD needs them.
	o2 := o
	o2.TDXCollateral, o2.IntelRoots = s.Collateral(), s.RootPEM()
	if _, err := verify.Token(tok, o2); err != nil {
		t.Fatal(err)
	}

	other, _ := simTDX(t, sim.TDXOptions{})
	_, debugAtt := simTDX(t, sim.TDXOptions{TDAttributes: attest.TDXDebug})
	debugTok, err := debugAtt.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: attest.TDX})
	if err != nil {
		t.Fatal(err)
	}
	_, oldAtt := simTDX(t, sim.TDXOptions{TCBStatus: "OutOfDate"})
	oldTok, err := oldAtt.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: attest.TDX})
	if err != nil {
		t.Fatal(err)
	}
	mrtdPolicy := func(m []byte) *verify.Policy {
		p, err := verify.ParsePolicy([]byte(`{"tdx":{"tdQuoteBodyPolicy":{"mrTd":"` + base64.StdEncoding.EncodeToString(m) + `"}}}`))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	corimPolicy := func(v corim.TDXValues) *verify.Policy {
		tr, err := corim.TDXTriple(v)
		if err != nil {
			t.Fatal(err)
		}
		return &verify.Policy{CoRIM: corim.New("tdx", []corim.RefTriple{tr}, nil)}
	}
	rtmr := func(b byte) []byte { v := make([]byte, 48); v[0] = b; return v }
	for _, tc := range []struct {
		name  string
		tok   []byte
		edit  func(o *verify.Options)
		check string
	}{
		{"simulated refused", tok, func(o *verify.Options) { o.AllowSimulated = false }, "simulated"},
		{"wrong nonce", tok, func(o *verify.Options) { o.Nonce = random(t, 32) }, "eat.nonce"},
		{"wrong report data", tok, func(o *verify.Options) { o.ReportData = random(t, 64) }, "tdx.report_data"},
		{"another platform's root", tok, func(o *verify.Options) { o.IntelRoots = other.RootPEM() }, "tdx.chain"},
		{"another platform's collateral", tok, func(o *verify.Options) { o.TDXCollateral = other.Collateral() }, "tdx.tcb"},
		{"TCB out of date", oldTok, nil, "tdx.tcb"},
		{"debug TD", debugTok, nil, "tdx.debug"},
		{"wrong MRTD (JSON policy)", tok, func(o *verify.Options) { o.Policy = mrtdPolicy(make([]byte, 48)) }, "tdx.mrtd"},
		{"wrong MRTD (CoRIM)", tok, func(o *verify.Options) { o.Policy = corimPolicy(corim.TDXValues{MRTD: make([]byte, 48)}) }, "corim.tdx.mrtd"},
		{"wrong RTMR1 (CoRIM)", tok, func(o *verify.Options) {
			o.Policy = corimPolicy(corim.TDXValues{MRTD: mrtd[:], RTMRs: [][]byte{rtmr(1), rtmr(9)}})
		}, "corim.tdx.rtmr1"},
		{"SNP policy for TDX evidence", tok, func(o *verify.Options) { o.Policy = &verify.Policy{SNP: &check.Policy{Policy: 0x30000}} }, "snp.policy"},
		{"PCR values for TDX evidence", tok, func(o *verify.Options) {
			o.Policy = &verify.Policy{PCRs: map[string]map[uint32][]byte{"sha256": {0: make([]byte, 32)}}}
		}, "vtpm.pcrs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oo := o
			if tc.edit != nil {
				tc.edit(&oo)
			}
			_, err := verify.Token(tc.tok, oo)
			wantCheck(t, err, tc.check)
		})
	}
	// Right CoRIM and JSON policy.
	for _, p := range []*verify.Policy{mrtdPolicy(mrtd[:]), corimPolicy(corim.TDXValues{MRTD: mrtd[:], RTMRs: [][]byte{rtmr(1), rtmr(2)}})} {
		oo := o
		oo.Policy = p
		if _, err := verify.Token(tok, oo); err != nil {
			t.Fatal(err)
		}
	}
	// A debug TD passes when the policy allows debug.
	oo := o
	oo.Policy, _ = verify.ParsePolicy([]byte(`{"tdx":{"tdQuoteBodyPolicy":{"tdAttributes":"AQAAAAAAAAA="}}}`))
	if _, err := verify.Token(debugTok, oo); err != nil {
		t.Fatal(err)
	}

	// The token key must be bound by a quote of the same TD: one from another
	// platform does not even chain to the evidence's root.
	c2 := decode(t, tok)
	otherTok, err := (&attest.Attester{TDX: other, Simulated: true}).Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: attest.TDX})
	if err != nil {
		t.Fatal(err)
	}
	c2.Signer = decode(t, otherTok).Signer
	swapped, err := eat.Encode(c2, attest.DefaultIssuer, time.Now(), func([]byte) ([]byte, error) { return make([]byte, 64), nil })
	if err != nil {
		t.Fatal(err)
	}
	_, err = verify.Token(swapped, o)
	wantCheck(t, err, "eat.signer.tdx.chain")
}
