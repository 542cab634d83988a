package verify

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	tdxtest "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/intelpcs"
)

// intelBundle records go-tdx-guest's sample Intel PCS responses (real ones,
// from June 2023) as an offline bundle.
func intelBundle(t *testing.T) []byte {
	var b intelpcs.Bundle
	for url, r := range tdxtest.TestGetter.Responses {
		b.Add(url, r.Header, r.Body)
	}
	out, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRealIntelQuote verifies go-tdx-guest's sample quote, from a real
// Sapphire Rapids machine, signed by Intel's PCK chain, with its real
// collateral, read through go-tdx-guest's fake /dev/tdx_guest: the path a
// hardware TD takes, to Intel's own root — not simulated.
func TestRealIntelQuote(t *testing.T) {
	tcs := tdxtest.TestCases()
	dev, err := tdxtest.TcDevice(tcs)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Open(""); err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	raw, _, err := attest.TDXQuote(dev, tcs[0].Input)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, testdata.RawQuote) {
		t.Fatal("the fake device returned another quote")
	}
	when := time.Date(2023, 6, 20, 0, 0, 0, 0, time.UTC) // within the sample collateral's validity
	base := Options{Now: when, TDXCollateral: intelBundle(t), Policy: &Policy{}}
	// The sample's collateral is newer than the machine that made the quote:
	// go-tdx-guest's own tests expect its TCB check to refuse it. So do we —
	// after the chain to Intel's real root and every signature passed.
	r := &Result{}
	_, _, err = verifyTDX(r, raw, nil, base, tcs[0].Input[:])
	if CheckName(err) != "tdx.tcb" || !strings.Contains(err.Error(), "no matching TCB level") {
		t.Fatalf("got %v, want the TCB check to refuse the sample's outdated platform", err)
	}
	if r.Simulated || !slices.Contains(r.Checks, "tdx.chain") || !slices.Contains(r.Checks, "tdx.signature") {
		t.Fatalf("simulated %v, checks %v: want Intel's chain and signatures verified", r.Simulated, r.Checks)
	}
	for _, tc := range []struct {
		name  string
		o     func(o *Options)
		check string
	}{
		{"collateral expired", func(o *Options) { o.Now = when.Add(60 * 24 * time.Hour) }, "tdx.tcb"},
		{"no collateral", func(o *Options) { o.TDXCollateral = nil }, "tdx.collateral"},
		{"other roots", func(o *Options) { o.IntelRoots = mustSimRoot(t) }, "tdx.chain"},
		{"PCK expired", func(o *Options) { o.Now = when.Add(20 * 365 * 24 * time.Hour) }, "tdx.chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.o(&o)
			_, _, err := verifyTDX(&Result{}, raw, nil, o, nil)
			if CheckName(err) != tc.check {
				t.Fatalf("got %v, want check %s", err, tc.check)
			}
			t.Logf("refused as expected: %v", err)
		})
	}
	// A flipped byte in the signed body (MRTD).
	bad := bytes.Clone(raw)
	bad[0x30+0x88] ^= 1
	if _, _, err := verifyTDX(&Result{}, bad, nil, base, nil); CheckName(err) != "tdx.signature" {
		t.Fatalf("tampered quote: %v", err)
	}
}
