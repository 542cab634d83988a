package sim

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevverify "github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// TestFakeChainAcceptedByGoSevGuest checks the fake chain against
// go-sev-guest's own verifier (not ours): accepted with the fake roots,
// refused with AMD's real roots, refused when the report is altered or the
// verifier's clock is outside the certificates' lifetime.
func TestFakeChainAcceptedByGoSevGuest(t *testing.T) {
	now := time.Now()
	s, err := NewSNP(SNPOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	copy(rd[:], "report data")
	quote, err := s.GetRawQuote(rd)
	if err != nil {
		t.Fatal(err)
	}
	report := quote[:abi.ReportSize]
	certs := quote[abi.ReportSize:]

	var fakeRoots []*x509.Certificate
	for rest := s.RootsPEM(); ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		fakeRoots = append(fakeRoots, c)
	}
	if len(fakeRoots) != 2 {
		t.Fatalf("RootsPEM: %d certificates, want 2 (ASK, ARK)", len(fakeRoots))
	}
	fake := &trust.AMDRootCerts{ProductLine: "Milan",
		ProductCerts: &trust.ProductCerts{Ask: fakeRoots[0], Ark: fakeRoots[1]}}
	tampered := bytes.Clone(report)
	tampered[0x90] ^= 1 // inside MEASUREMENT

	tests := []struct {
		name   string
		report []byte
		roots  *trust.AMDRootCerts
		now    time.Time
		ok     bool
	}{
		{"fake roots", report, fake, now, true},
		{"real AMD roots", report, trust.DefaultRootCerts["Milan"], now, false},
		{"tampered report", tampered, fake, now, false},
		{"after VCEK expiry", report, fake, now.Add(8 * 365 * 24 * time.Hour), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			att, err := abi.ReportCertsToProto(append(bytes.Clone(tc.report), certs...))
			if err != nil {
				t.Fatal(err)
			}
			opts := &sevverify.Options{
				Now:          tc.now,
				Product:      abi.DefaultSevProduct(),
				TrustedRoots: map[string][]*trust.AMDRootCerts{"Milan": {tc.roots}},
			}
			err = sevverify.SnpAttestation(att, opts)
			if (err == nil) != tc.ok {
				t.Fatalf("SnpAttestation: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestVCEKExtensions checks that the VCEK certifies the simulated chip's ID
// and TCB, as AMD's KDS does for a real chip.
func TestVCEKExtensions(t *testing.T) {
	tcb := kds.TCBParts{BlSpl: 7, TeeSpl: 1, SnpSpl: 21, UcodeSpl: 200}
	s, err := NewSNP(SNPOptions{TCB: &tcb})
	if err != nil {
		t.Fatal(err)
	}
	exts, err := kds.VcekCertificateExtensions(s.chain.vcek)
	if err != nil {
		t.Fatal(err)
	}
	if exts.TCBVersion != mustCompose(t, tcb) {
		t.Errorf("VCEK TCB %x, want %x", exts.TCBVersion, mustCompose(t, tcb))
	}
	if !bytes.Equal(exts.HWID, s.base.ChipId) {
		t.Errorf("VCEK HWID %x, want the report's chip ID %x", exts.HWID, s.base.ChipId)
	}
	if exts.ProductName != kds.ProductName(abi.DefaultSevProduct()) {
		t.Errorf("VCEK product %q", exts.ProductName)
	}
}

func mustCompose(t *testing.T, p kds.TCBParts) kds.TCBVersion {
	v, err := kds.ComposeTCBParts(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// BenchmarkNewSNP measures certifying a chip's chain (keys already parsed).
func BenchmarkNewSNP(b *testing.B) {
	if _, err := testOnlyKeys(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := NewSNP(SNPOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
