package kbs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-sev-guest/proto/check"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/pull/kbs"
	"github.com/cvmd/cvmd/pull/kbs/kbstest"
	"github.com/cvmd/cvmd/pull/pulltest"
)

// simAttester is a simulated SNP+vTPM platform (go-tpm-tools simulator and
// go-sev-guest's test signer), the same code path as the attestation child.
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

func evidenceOf(a *attest.Attester) kbs.EvidenceFunc {
	return func(_ context.Context, reportData, nonce []byte) ([]byte, string, error) {
		tok, err := a.Attest(attest.Request{ReportData: reportData, Nonce: nonce, Platform: attest.SNPvTPM})
		return tok, "SNP-vTPM", err
	}
}

type fixture struct {
	srv    *kbstest.Server
	client *http.Client
	att    *attest.Attester
}

func newFixture(t *testing.T) *fixture {
	ca := pulltest.NewCA(t)
	srv := kbstest.Start(t, ca.Server)
	srv.Verify = verify.Options{AllowSimulated: true}
	srv.SetResource("default/key/model", bytes.Repeat([]byte{0xAB}, 32))
	return &fixture{srv: srv, att: simAttester(t),
		client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}}
}

func (f *fixture) clientWith(ev kbs.EvidenceFunc) *kbs.Client {
	c, err := kbs.New(kbs.Config{HTTP: f.client, Evidence: ev, Attempts: 1})
	if err != nil {
		panic(err)
	}
	return c
}

func TestKeyReleased(t *testing.T) {
	f := newFixture(t)
	key, err := f.clientWith(evidenceOf(f.att)).Key(context.Background(), f.srv.URL, "default/key/model")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, bytes.Repeat([]byte{0xAB}, 32)) {
		t.Fatalf("key %x", key)
	}
	if f.srv.Auths.Load() != 1 || f.srv.Attests.Load() != 1 || f.srv.Releases.Load() != 1 {
		t.Fatalf("auth %d attest %d release %d", f.srv.Auths.Load(), f.srv.Attests.Load(), f.srv.Releases.Load())
	}
}

func TestKBSRefuses(t *testing.T) {
	f := newFixture(t)
	good := evidenceOf(f.att)
	stale := func(ctx context.Context, reportData, nonce []byte) ([]byte, string, error) {
		// Evidence bound to something else (a replay of another session's).
		return good(ctx, bytes.Repeat([]byte{1}, 48), bytes.Repeat([]byte{2}, 32))
	}
	otherKey := func(ctx context.Context, reportData, nonce []byte) ([]byte, string, error) {
		// The right vTPM nonce, but the SNP report data of another TEE key.
		return good(ctx, bytes.Repeat([]byte{1}, 48), nonce)
	}
	cases := []struct {
		name   string
		setup  func()
		ev     kbs.EvidenceFunc
		path   string
		expect string
	}{
		{"evidence bound to another nonce", nil, stale, "default/key/model", "eat.nonce"},
		{"SNP report bound to another key", nil, otherKey, "default/key/model", "snp.report_data"},
		{"wrong measurement", func() {
			f.srv.Verify.Policy = &verify.Policy{SNP: &check.Policy{Policy: verify.DefaultSNPGuestPolicy, Measurement: bytes.Repeat([]byte{9}, 48)}}
		}, good, "default/key/model", "snp.measurement"},
		{"simulated platform not allowed", func() { f.srv.Verify = verify.Options{} }, good, "default/key/model", "simulated"},
		{"resource denied", func() { f.srv.RefuseResources.Store(true) }, good, "default/key/model", "403"},
		{"resource missing", nil, good, "default/key/other", "404"},
		{"JWE with A128GCM", func() { f.srv.ContentEncryption = jose.A128GCM }, good, "default/key/model", "not a JWE with alg ECDH-ES+A256KW and enc A256GCM"},
		{"bad resource path", nil, good, "default/../model", "unsafe"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f.srv.Verify = verify.Options{AllowSimulated: true}
			f.srv.RefuseResources.Store(false)
			f.srv.ContentEncryption = ""
			if c.setup != nil {
				c.setup()
			}
			_, err := f.clientWith(c.ev).Key(context.Background(), f.srv.URL, c.path)
			if !errors.Is(err, kbs.ErrRefused) || !strings.Contains(err.Error(), c.expect) {
				t.Fatalf("got %v, want a refusal with %q", err, c.expect)
			}
		})
	}
}

// TestServerRefusesForeignNonce: runtime data carrying a nonce that is not
// the session's is refused before any evidence is looked at.
func TestServerRefusesForeignNonce(t *testing.T) {
	f := newFixture(t)
	// A session whose runtime data carries a nonce it was not given.
	res, err := f.client.Post(f.srv.URL+"/kbs/v0/auth", "application/json", strings.NewReader(`{"version":"0.4.0","tee":"snp","extra-params":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	req, _ := http.NewRequest("POST", f.srv.URL+"/kbs/v0/attest", strings.NewReader(`{"runtime-data":{"nonce":"AAAA","tee-pubkey":{"kty":"EC"}},"tee-evidence":{"primary_evidence":{"eat":"","platform":"SNP-vTPM"},"additional_evidence":""}}`))
	for _, c := range res.Cookies() {
		req.AddCookie(c)
	}
	res, err = f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 || !strings.Contains(f.srv.LastRefusal(), "is not this session's") {
		t.Fatalf("status %d, refusal %q", res.StatusCode, f.srv.LastRefusal())
	}
}

func TestBinding(t *testing.T) {
	rd, n, err := kbs.Binding("sha384", "abc", []byte(`{"y":"2","x":"1","kty":"EC"}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rd) != 48 || len(n) != 32 {
		t.Fatalf("lengths %d %d", len(rd), len(n))
	}
	// Key order and spacing of the JWK must not matter: the binding is over canonical JSON.
	rd2, _, _ := kbs.Binding("sha384", "abc", []byte(`{ "kty":"EC", "x":"1", "y":"2" }`), "")
	if !bytes.Equal(rd, rd2) {
		t.Fatal("binding depends on JSON formatting")
	}
	if _, _, err := kbs.Binding("md5", "abc", []byte(`{}`), ""); err == nil {
		t.Fatal("md5 accepted")
	}
	if kbs.SelectedHash([]byte(`"{\"selected-hash-algorithm\":\"sha512\"}"`)) != "sha512" || kbs.SelectedHash([]byte(`{"selected-hash-algorithm":"sha256"}`)) != "sha256" {
		t.Fatal("selected-hash-algorithm not read in both forms")
	}
}
