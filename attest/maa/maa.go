// Package maa is a client of Microsoft Azure Attestation for Azure TDX
// confidential VMs: it sends a TD quote and the HCL report's runtime claims
// to MAA's TdxVm endpoint and validates the JWT it answers against MAA's
// signing keys (a JWKS the caller supplies: nothing is fetched implicitly).
//
// Wire facts (reference/cocos-pull-and-platforms.md §5.3): POST
// <MAA>/attest/TdxVm?api-version=2025-06-01 with JSON {"quote": b64url,
// "runtimeData": {"data": b64url(claims), "dataType": "JSON"}, "nonce":
// b64url(nonce)} → {"token": "<JWT>"}.
//
// The agent uses it for `azure-token` (children/agent/azuretoken.go):
// the attestation child makes the evidence, the agent posts it through the
// egress child; the CLI validates the token. The AzureGuest endpoint
// (SEV-SNP) needs the host's THIM certificates and TPM key certifications
// and is not implemented.
//
// maa imports only the standard library; anyone may import it.
package maa

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// DefaultURL is the instance Cocos uses when AGENT_MAA_URL is not set.
const DefaultURL = "https://sharedeus2.eus2.attest.azure.net"

// APIVersion is the TdxVm API version cvmd speaks.
const APIVersion = "2025-06-01"

// MaxResponse bounds what is read of an MAA answer.
const MaxResponse = 1 << 20

var b64 = base64.RawURLEncoding

// TDXRequest is the body of a TdxVm attestation.
type TDXRequest struct {
	Quote       string      `json:"quote"`
	RuntimeData RuntimeData `json:"runtimeData"`
	Nonce       string      `json:"nonce,omitempty"`
}

// RuntimeData carries the HCL report's runtime claims.
type RuntimeData struct {
	Data     string `json:"data"`
	DataType string `json:"dataType"`
}

// NewTDXRequest builds the request for a quote, the runtime claims and a nonce.
func NewTDXRequest(quote, claims, nonce []byte) *TDXRequest {
	typ := "JSON"
	if !json.Valid(claims) {
		typ = "Binary"
	}
	return &TDXRequest{Quote: b64.EncodeToString(quote), RuntimeData: RuntimeData{Data: b64.EncodeToString(claims), DataType: typ}, Nonce: b64.EncodeToString(nonce)}
}

// NonceSize is the most a token nonce has (Cocos's tokenNonce); shorter
// ones are zero-padded to it.
const NonceSize = 32

// UserData is what a token over nonce asks the HCL to put in its runtime
// claims (and so, through their hash, in the TD's REPORTDATA), as Cocos:
// SHA-256 of the nonce zero-padded to NonceSize, then 32 zero bytes.
func UserData(nonce []byte) [64]byte {
	var padded [NonceSize]byte
	copy(padded[:], nonce)
	var ud [64]byte
	h := sha256.Sum256(padded[:])
	copy(ud[:], h[:])
	return ud
}

// Client talks to one MAA instance.
type Client struct {
	// URL is the instance, e.g. https://sharedeus2.eus2.attest.azure.net.
	URL string
	// HTTP is the client to use (its transport decides the route, e.g. a
	// proxy); nil = http.DefaultClient.
	HTTP *http.Client
}

// AttestTDX posts req and returns MAA's token (not yet validated).
func (c *Client) AttestTDX(ctx context.Context, req *TDXRequest) (string, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return "", err
	}
	u := strings.TrimRight(c.URL, "/") + "/attest/TdxVm?api-version=" + APIVersion
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("maa: %w", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(hr)
	if err != nil {
		return "", fmt.Errorf("maa: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponse+1))
	if err != nil {
		return "", fmt.Errorf("maa: reading the answer: %w", err)
	}
	if len(b) > MaxResponse {
		return "", fmt.Errorf("maa: answer over %d bytes", MaxResponse)
	}
	if resp.StatusCode != http.StatusOK {
		return "", &StatusError{URL: u, Status: resp.StatusCode, Body: snippet(b)}
	}
	var out struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Token == "" {
		return "", fmt.Errorf("maa: answer without a token: %q", b)
	}
	return out.Token, nil
}

// StatusError is MAA's answer other than 200 OK: its status and the start
// of its body (MAA says there why it refused the evidence).
type StatusError struct {
	URL    string
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("maa: %s answered %d %s: %s", e.URL, e.Status, http.StatusText(e.Status), e.Body)
}

// maxSnippet bounds how much of a refusal's body an error carries.
const maxSnippet = 512

// snippet is b trimmed, cut at maxSnippet bytes, with control characters
// replaced: it goes into error messages and logs.
func snippet(b []byte) string {
	cut := len(b) > maxSnippet
	if cut {
		b = b[:maxSnippet]
	}
	s := strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(string(b), "?")))
	if cut {
		s += "…"
	}
	return s
}

// JWKS is MAA's signing keys (<MAA>/certs).
type JWKS struct {
	Keys []struct {
		Kid string   `json:"kid"`
		Kty string   `json:"kty"`
		N   string   `json:"n"`
		E   string   `json:"e"`
		X5c []string `json:"x5c"`
	} `json:"keys"`
}

// FetchJWKS gets the instance's signing keys from <URL>/certs (what Cocos's
// CLI trusts). Whoever runs it trusts the route to the instance (TLS).
func (c *Client) FetchJWKS(ctx context.Context) ([]byte, error) {
	u := strings.TrimRight(c.URL, "/") + "/certs"
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("maa: %w", err)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("maa: signing keys: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("maa: reading the signing keys: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &StatusError{URL: u, Status: resp.StatusCode, Body: snippet(b)}
	}
	if len(b) > MaxResponse {
		return nil, fmt.Errorf("maa: signing keys over %d bytes", MaxResponse)
	}
	return b, nil
}

// Claims are what cvmd checks of an MAA token.
type Claims struct {
	Issuer    string `json:"iss"`
	IssuedAt  int64  `json:"iat"`
	NotBefore int64  `json:"nbf"`
	Expires   int64  `json:"exp"`
	// All is every claim: where MAA echoes the nonce and the runtime data
	// (x-ms-runtime) is for the caller to check.
	All map[string]any `json:"-"`
}

// Validate checks an MAA token: RS256 signature by a key of jwks (by kid),
// issuer = the client's URL, iat/nbf/exp around now within skew.
func (c *Client) Validate(token string, jwks []byte, now time.Time, skew time.Duration) (*Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("maa: token is not a JWS compact serialization")
	}
	var hdr struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := decodeJSON(parts[0], &hdr); err != nil {
		return nil, fmt.Errorf("maa: token header: %w", err)
	}
	if hdr.Alg != "RS256" {
		return nil, fmt.Errorf("maa: token alg %q, want RS256", hdr.Alg)
	}
	var ks JWKS
	if err := json.Unmarshal(jwks, &ks); err != nil {
		return nil, fmt.Errorf("maa: JWKS: %w", err)
	}
	var pub *rsa.PublicKey
	for _, k := range ks.Keys {
		if k.Kid != hdr.Kid {
			continue
		}
		var err error
		if pub, err = rsaKey(k.N, k.E, k.X5c); err != nil {
			return nil, fmt.Errorf("maa: JWKS key %s: %w", k.Kid, err)
		}
	}
	if pub == nil {
		return nil, fmt.Errorf("maa: no JWKS key with kid %q", hdr.Kid)
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return nil, fmt.Errorf("maa: token signature: %w", err)
	}
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig); err != nil {
		return nil, fmt.Errorf("maa: token signature: %w", err)
	}
	var cl Claims
	if err := decodeJSON(parts[1], &cl); err != nil {
		return nil, fmt.Errorf("maa: token claims: %w", err)
	}
	if err := decodeJSON(parts[1], &cl.All); err != nil {
		return nil, fmt.Errorf("maa: token claims: %w", err)
	}
	if want := strings.TrimRight(c.URL, "/"); strings.TrimRight(cl.Issuer, "/") != want {
		return nil, fmt.Errorf("maa: token issuer %q, want %q", cl.Issuer, want)
	}
	switch {
	case cl.Expires == 0 || now.Add(-skew).Unix() > cl.Expires:
		return nil, fmt.Errorf("maa: token expired at %s", time.Unix(cl.Expires, 0).UTC().Format(time.RFC3339))
	case cl.NotBefore != 0 && now.Add(skew).Unix() < cl.NotBefore, cl.IssuedAt != 0 && now.Add(skew).Unix() < cl.IssuedAt:
		return nil, errors.New("maa: token not valid yet")
	}
	return &cl, nil
}

// CheckUserData checks that the token's runtime claims (x-ms-runtime, the
// HCL report's claims MAA checked against the quote) carry UserData(nonce):
// the token answers this nonce, not an earlier one.
func (c *Claims) CheckUserData(nonce []byte) error {
	rt, ok := c.All["x-ms-runtime"].(map[string]any)
	if !ok {
		return errors.New("maa: token has no runtime claims (x-ms-runtime): it is not bound to a nonce")
	}
	got, _ := rt["user-data"].(string)
	ud := UserData(nonce)
	if want := hex.EncodeToString(ud[:]); !strings.EqualFold(got, want) {
		return fmt.Errorf("maa: token's user-data %q is not this nonce's %s", got, want)
	}
	return nil
}

func decodeJSON(seg string, v any) error {
	b, err := b64.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// rsaKey takes the key from the first x5c certificate if any, else n and e.
func rsaKey(n, e string, x5c []string) (*rsa.PublicKey, error) {
	if len(x5c) > 0 {
		der, err := base64.StdEncoding.DecodeString(x5c[0])
		if err != nil {
			return nil, err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		k, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("certificate key is %T, want RSA", cert.PublicKey)
		}
		return k, nil
	}
	nb, err1 := b64.DecodeString(n)
	eb, err2 := b64.DecodeString(e)
	if err1 != nil || err2 != nil || len(nb) == 0 || len(eb) == 0 || len(eb) > 4 {
		return nil, errors.New("bad modulus or exponent")
	}
	ev := 0
	for _, c := range eb {
		ev = ev<<8 | int(c)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: ev}, nil
}
