package atls

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

// simAttester is a simulated SNP+vTPM VM: the go-tpm-tools TPM simulator and
// go-sev-guest's test signer, through attest's real evidence code.
func simAttester(t testing.TB) *attest.Attester {
	t.Helper()
	s, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := attest.NewTPM(rw)
	if err != nil {
		rw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close(); rw.Close() })
	return &attest.Attester{TPM: tp, SNP: s, Simulated: true}
}

// policyVerifier is atlsverify.Policy, which this package's own tests
// cannot import (it imports atls).
func policyVerifier(o verify.Options) EvidenceVerifier {
	return func(_ context.Context, evidence []byte, want Expected) error {
		o.ReportData, o.Nonce = want.ReportData[:], want.Nonce[:]
		_, err := verify.Token(evidence, o)
		return err
	}
}

func simEvidence(t testing.TB, a *attest.Attester) func(rd [64]byte, nonce [32]byte) []byte {
	return func(rd [64]byte, nonce [32]byte) []byte {
		tok, err := a.Attest(attest.Request{ReportData: rd[:], Nonce: nonce[:], Platform: attest.SNPvTPM})
		if err != nil {
			t.Errorf("attest: %v", err)
		}
		return tok
	}
}

// TestSimulatedEvidence runs aTLS with evidence from the simulated SNP+vTPM
// platform, verified by attest/verify: success, then each attack refused by
// the check that should refuse it.
func TestSimulatedEvidence(t *testing.T) {
	a := simAttester(t)
	id, _ := NewEphemeralIdentity()
	verifier := policyVerifier(verify.Options{AllowSimulated: true})

	t.Run("success through Serve", func(t *testing.T) {
		c := pair(t, func(raw net.Conn) {
			conn := tls.Server(raw, ServerTLSConfig(id))
			ev := func(_ context.Context, rd [64]byte, n [32]byte) ([]byte, error) {
				return a.Attest(attest.Request{ReportData: rd[:], Nonce: n[:], Platform: attest.SNPvTPM})
			}
			if err := Serve(context.Background(), conn, &ServerConfig{Identity: id, Evidence: ev}); err != nil {
				t.Errorf("server: %v", err)
				return
			}
			io.Copy(conn, conn)
		})
		conn, res, err := Client(context.Background(), c, "", &ClientConfig{VerifyEvidence: verifier})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Chain[0].Raw, id.Certificate[0]) {
			t.Fatal("wrong leaf")
		}
		conn.Write([]byte("x"))
		b := make([]byte, 1)
		if _, err := io.ReadFull(conn, b); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("simulated evidence refused by the default policy", func(t *testing.T) {
		c := pair(t, (&forge{id: id, evidence: simEvidence(t, a)}).serve(t))
		_, _, err := Client(context.Background(), c, "", &ClientConfig{VerifyEvidence: policyVerifier(verify.Options{})})
		if FailedCheck(err) != CheckEvidencePolicy {
			t.Fatalf("err = %v", err)
		}
	})

	fixedCtx := bytes.Repeat([]byte{5}, 32)
	var captured []byte
	c := pair(t, (&forge{id: id, evidence: simEvidence(t, a), capture: &captured}).serve(t))
	if _, _, err := Client(context.Background(), c, "", &ClientConfig{Context: fixedCtx, VerifyEvidence: verifier}); err != nil {
		t.Fatalf("genuine session: %v", err)
	}
	tests := []struct {
		name  string
		f     forge
		ctx   []byte
		check string
	}{
		{"tampered binding", forge{binding: bytes.Repeat([]byte{1}, 32)}, nil, CheckBinding},
		{"wrong context", forge{context: bytes.Repeat([]byte{9}, 32)}, nil, CheckContext},
		{"replayed authenticator", forge{replay: captured}, fixedCtx, CheckSignature},
		{"unsigned Finished-only authenticator", forge{onlyFin: true}, nil, CheckAuthenticator},
		{"Finished MAC from elsewhere", forge{finished: make([]byte, 32)}, nil, CheckFinished},
		{"evidence with another vTPM nonce", forge{nonce: bytes.Repeat([]byte{3}, 32)}, nil, CheckEvidenceNonce},
		{"evidence with right nonce, wrong SNP report data", forge{reportData: bytes.Repeat([]byte{4}, 64)}, nil, CheckEvidencePolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			f.id, f.evidence = id, simEvidence(t, a)
			c := pair(t, f.serve(t))
			_, _, err := Client(context.Background(), c, "", &ClientConfig{Context: tt.ctx, VerifyEvidence: verifier})
			if got := FailedCheck(err); got != tt.check {
				t.Fatalf("err = %v (check %q), want check %q", err, got, tt.check)
			}
			t.Logf("refused: %v", err)
		})
	}
}
