package verify_test

import (
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

func FuzzToken(f *testing.F) {
	fx := newFixture(f, true, &sim.SNPOptions{})
	for _, p := range []attest.Platform{attest.SNP, attest.VTPM, attest.SNPvTPM} {
		tok, err := fx.a.Attest(attest.Request{ReportData: []byte("tee"), Nonce: []byte("nonce"), Platform: p})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
	}
	_, ta := simTDX(f, sim.TDXOptions{})
	tok, err := ta.Attest(attest.Request{ReportData: []byte("tee"), Nonce: []byte("nonce"), Platform: attest.TDX})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := verify.Token(b, verify.Options{AllowSimulated: true})
		if err == nil && r == nil {
			t.Fatal("nil result without error")
		}
		if err != nil && verify.CheckName(err) == "" {
			t.Fatalf("refusal without a check name: %v", err)
		}
	})
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"policy":{"policy":"196608","minimumGuestSvn":1,"vmpl":2},"pcr_values":{"sha256":{"16":"` +
		"0000000000000000000000000000000000000000000000000000000000000000" + `"}},"cvmd":{"trusted_ak_sha256":[]}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := verify.ParsePolicy(b)
		if err == nil && p == nil {
			t.Fatal("nil policy without error")
		}
	})
}
