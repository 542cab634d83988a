package verify_test

import (
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

func BenchmarkTokenSNPvTPM(b *testing.B) {
	f := newFixture(b, true, &sim.SNPOptions{})
	tok, err := f.a.Attest(attest.Request{ReportData: []byte("tee"), Nonce: []byte("nonce"), Platform: attest.SNPvTPM})
	if err != nil {
		b.Fatal(err)
	}
	o := verify.Options{AllowSimulated: true, AMDBundle: f.snp.RootsPEM()}
	for b.Loop() {
		if _, err := verify.Token(tok, o); err != nil {
			b.Fatal(err)
		}
	}
}
