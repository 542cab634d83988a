package verify

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/corim"
	"github.com/cvmd/cvmd/attest/sim"
)

// TestBenchCoRIM measures what a CoRIM policy costs a verification: loading
// the file (decode, measurement check) and evaluating its reference values
// against verified evidence, interleaved with the reference: verifying the
// same SNP token without it.
func TestBenchCoRIM(t *testing.T) {
	if os.Getenv("CVMD_BENCH") != "1" {
		t.Skip("CVMD_BENCH=1 runs benchmarks")
	}
	s, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := &attest.Attester{SNP: s, Simulated: true}
	tok, err := a.Attest(attest.Request{ReportData: []byte("tee"), Platform: attest.SNP})
	if err != nil {
		t.Fatal(err)
	}
	m := sim.DefaultMeasurement()
	snp, err := corim.SNPTriple(corim.SNPValues{Measurements: [][]byte{make([]byte, 48), m[:]}, Policy: ptrU64(sim.DefaultPolicy), HostData: make([]byte, 32), Product: "Milan"})
	if err != nil {
		t.Fatal(err)
	}
	file, err := corim.Marshal(corim.New("snp", []corim.RefTriple{snp}, nil))
	if err != nil {
		t.Fatal(err)
	}
	base := Options{AllowSimulated: true, AMDBundle: s.RootsPEM(), Policy: &Policy{}, Now: time.Now()}
	r, err := Token(tok, base)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var plain, withCoRIM time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := Token(tok, base); err != nil {
			t.Fatal(err)
		}
		plain += time.Since(start)
		start = time.Now()
		p, err := LoadPolicy(file, PolicyOptions{AllowUnsignedCoRIM: true})
		if err != nil {
			t.Fatal(err)
		}
		o := base
		o.Policy = p
		if err := checkCoRIM(r, o); err != nil {
			t.Fatal(err)
		}
		withCoRIM += time.Since(start)
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 / n }
	fmt.Printf("BENCH corim_verify_us %.1f us\n", us(withCoRIM))
	fmt.Printf("BENCH corim_verify_ref_us %.1f us\n", us(plain))
	fmt.Printf("BENCH corim_verify_ratio %.4f ratio\n", us(withCoRIM)/us(plain))
}

func ptrU64(v uint64) *uint64 { return &v }
