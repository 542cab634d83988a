package maa

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// testMAA is a loopback stand-in for an MAA instance: it checks the request
// shape and answers a token signed by its own key, published as a JWKS.
type testMAA struct {
	key  *rsa.PrivateKey
	srv  *httptest.Server
	got  TDXRequest
	fail bool
}

func newTestMAA(t *testing.T) *testMAA {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	m := &testMAA{key: k}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/attest/TdxVm" || r.URL.Query().Get("api-version") != APIVersion || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request line", http.StatusBadRequest)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&m.got); err != nil || m.fail {
			http.Error(w, `{"error":{"code":"InvalidParameter"}}`, http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"token": m.token(t, map[string]any{"iss": m.srv.URL, "iat": time.Now().Unix(), "exp": time.Now().Add(8 * time.Hour).Unix(), "x-ms-runtime": m.got.RuntimeData.Data}, "k1")})
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *testMAA) token(t *testing.T, claims map[string]any, kid string) string {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": kid, "typ": "JWT"})
	c, _ := json.Marshal(claims)
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	d := sha256.Sum256([]byte(in))
	sig, err := rsa.SignPKCS1v15(rand.Reader, m.key, crypto.SHA256, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + b64.EncodeToString(sig)
}

func (m *testMAA) jwks(kid string) []byte {
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kid": kid, "kty": "RSA", "n": b64.EncodeToString(m.key.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(m.key.E)).Bytes()),
	}}})
	return b
}

func TestAttestTDX(t *testing.T) {
	m := newTestMAA(t)
	c := &Client{URL: m.srv.URL, HTTP: m.srv.Client()}
	quote, claims, nonce := []byte("quote bytes"), []byte(`{"keys":[]}`), []byte("nonce")
	tok, err := c.AttestTDX(context.Background(), NewTDXRequest(quote, claims, nonce))
	if err != nil {
		t.Fatal(err)
	}
	if m.got.Quote != base64.RawURLEncoding.EncodeToString(quote) || m.got.RuntimeData.DataType != "JSON" || m.got.Nonce != base64.RawURLEncoding.EncodeToString(nonce) {
		t.Fatalf("request %+v", m.got)
	}
	cl, err := c.Validate(tok, m.jwks("k1"), time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if cl.All["x-ms-runtime"] != m.got.RuntimeData.Data {
		t.Fatalf("claims %v", cl.All)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	bad := *m
	bad.key = other
	for _, tc := range []struct {
		name, tok string
		jwks      []byte
		now       time.Time
		want      string
	}{
		{"other key", tok, bad.jwks("k1"), time.Now(), "signature"},
		{"unknown kid", tok, m.jwks("k2"), time.Now(), "no JWKS key"},
		{"expired", tok, m.jwks("k1"), time.Now().Add(24 * time.Hour), "expired"},
		{"other issuer", m.token(t, map[string]any{"iss": "https://evil.example", "exp": time.Now().Add(time.Hour).Unix()}, "k1"), m.jwks("k1"), time.Now(), "issuer"},
		{"body changed", strings.Replace(tok, ".", ".e30", 1), m.jwks("k1"), time.Now(), ""},
		{"alg none", b64.EncodeToString([]byte(`{"alg":"none","kid":"k1"}`)) + ".e30.", m.jwks("k1"), time.Now(), "alg"},
	} {
		_, err := c.Validate(tc.tok, tc.jwks, tc.now, time.Minute)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	m.fail = true
	if _, err := c.AttestTDX(context.Background(), NewTDXRequest(quote, claims, nonce)); err == nil || !strings.Contains(err.Error(), "InvalidParameter") {
		t.Fatalf("MAA error: %v", err)
	}
}

// UserData is Cocos's: SHA-256 of the nonce zero-padded to 32 bytes, then
// 32 zero bytes; CheckUserData finds it in x-ms-runtime and refuses a token
// without runtime claims or over another nonce.
func TestUserData(t *testing.T) {
	padded := make([]byte, 32)
	copy(padded, "abc")
	h := sha256.Sum256(padded)
	if ud := UserData([]byte("abc")); string(ud[:32]) != string(h[:]) || [32]byte(ud[32:]) != [32]byte{} {
		t.Fatalf("UserData %x", ud)
	}
	ud := UserData([]byte("abc"))
	for _, tc := range []struct {
		name string
		all  map[string]any
		want string
	}{
		{"bound", map[string]any{"x-ms-runtime": map[string]any{"user-data": strings.ToUpper(hex.EncodeToString(ud[:]))}}, ""},
		{"other nonce", map[string]any{"x-ms-runtime": map[string]any{"user-data": hex.EncodeToString(make([]byte, 64))}}, "not this nonce's"},
		{"no runtime claims", map[string]any{}, "no runtime claims"},
	} {
		err := (&Claims{All: tc.all}).CheckUserData([]byte("abc"))
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// A refusal's body reaches the error bounded and without control
// characters.
func TestSnippet(t *testing.T) {
	if got := snippet([]byte("  {\"error\":\n\"x\"}\x00 ")); got != `{"error": "x"}` {
		t.Fatalf("snippet %q", got)
	}
	if got := snippet([]byte(strings.Repeat("a", 2*maxSnippet))); len(got) != maxSnippet+len("…") {
		t.Fatalf("snippet of %d bytes", len(got))
	}
}

// FuzzValidate: whatever MAA (or whoever answers in its place) sends,
// Validate neither panics nor accepts a token its key did not sign.
func FuzzValidate(f *testing.F) {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		f.Fatal(err)
	}
	m := &testMAA{key: k}
	jwks := m.jwks("k1")
	f.Add("e30.e30.")
	f.Add(b64.EncodeToString([]byte(`{"alg":"RS256","kid":"k1"}`)) + ".e30.AAAA")
	f.Add("a.b.c.d")
	c := &Client{URL: "https://maa.example"}
	f.Fuzz(func(t *testing.T, tok string) {
		if _, err := c.Validate(tok, jwks, time.Now(), time.Minute); err == nil {
			t.Fatalf("accepted %q", tok)
		}
	})
}
