package sim

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/cvmd/cvmd/attest/intelpcs"
)

// TestTDXVerifiesWithGoTDXGuest: go-tdx-guest's own verifier accepts the
// simulated quote with its collateral (chain, signatures, TCB, QE identity,
// CRLs), given the test-only root.
func TestTDXVerifiesWithGoTDXGuest(t *testing.T) {
	for _, status := range []string{"", "OutOfDate"} {
		tdx, err := NewTDX(TDXOptions{TCBStatus: status})
		if err != nil {
			t.Fatal(err)
		}
		raw, err := tdx.GetRawQuote([64]byte{1, 2, 3})
		if err != nil {
			t.Fatal(err)
		}
		q, err := abi.QuoteToProto(raw)
		if err != nil {
			t.Fatal(err)
		}
		if rd := q.(*tdxpb.QuoteV4).GetTdQuoteBody().GetReportData(); rd[0] != 1 || rd[2] != 3 {
			t.Fatalf("report data %x", rd)
		}
		b, err := intelpcs.Parse(tdx.Collateral())
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(tdx.RootPEM())
		root, _ := x509.ParseCertificate(blk.Bytes)
		pool := x509.NewCertPool()
		pool.AddCert(root)
		now := time.Now()
		ts := &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now}
		err = tdxverify.TdxQuote(q, &tdxverify.Options{GetCollateral: true, CheckRevocations: true, Getter: b, TrustedRoots: pool, Now: ts})
		t.Logf("TCB status %q: %v", status, err)
		if (status == "") != (err == nil) {
			t.Fatalf("TCB status %q: verify %v", status, err)
		}
		// Without the test-only root it is not Intel's.
		if err := tdxverify.TdxQuote(q, &tdxverify.Options{TrustedRoots: x509.NewCertPool(), Now: ts}); err == nil {
			t.Fatal("simulated quote verified without its root")
		}
	}
}
