// Package kbs is a client of Trustee's Key Broker Service protocol (RCAR:
// request, challenge, attestation, response), which releases the key of an
// encrypted resource only to an attested CVM:
//
//	POST /kbs/v0/auth     {"version":"0.4.0","tee":…,"extra-params":{…}}  → {"nonce",…} + kbs-session-id cookie
//	POST /kbs/v0/attest   {"runtime-data":{"nonce","tee-pubkey"},"tee-evidence":{…}} → {"token": JWT}
//	GET  /kbs/v0/resource/<repo>/<type>/<tag>                              → JWE for tee-pubkey
//
// The evidence is this CVM's own, from the attestation child (Config.Evidence),
// bound to the KBS's nonce and a fresh P-256 TEE key: its report data is the
// selected hash of the canonical JSON of {"additional-evidence", "nonce",
// "tee-pubkey"} (as the CoCo attestation agent binds it), its vTPM nonce the
// SHA-256 of the same bytes. The key comes back as a JWE whose alg must be
// ECDH-ES+A256KW and enc A256GCM (go-jose checks both before decrypting);
// anything else — a plaintext body, another algorithm — is refused, where
// Cocos takes a non-JWE body as the key itself.
//
// The evidence is cvmd's EAT (attest/eat) in primary_evidence as
// {"eat": base64, "platform": …}: a stock Trustee has no verifier for it,
// so interoperating with one needs a Trustee verifier plugin for cvmd's EAT
// (not available today). pull/kbs/kbstest is a KBS that verifies it with
// attest/verify.
//
// It opens no socket: Config.HTTP carries every request (through the egress
// in the agent). It imports go-jose and the standard library.
package kbs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// ProtocolVersion is what Trustee's KBS requires in the request (exactly).
const ProtocolVersion = "0.4.0"

// ErrRefused classes every refusal by the KBS (attestation refused,
// resource denied or missing) and every malformed answer.
var ErrRefused = errors.New("kbs: refused")

// EvidenceFunc returns this CVM's evidence (an EAT token) with the given
// SNP report data (≤ 64 bytes) and vTPM nonce (≤ 32 bytes), and the
// platform that produced it ("SNP-vTPM", "vTPM", "SNP").
type EvidenceFunc func(ctx context.Context, reportData, nonce []byte) (token []byte, platform string, err error)

// Config is what a Client needs.
type Config struct {
	// HTTP carries the requests (its transport dials through the egress
	// and verifies TLS). Required.
	HTTP *http.Client
	// Evidence produces this CVM's evidence. Required.
	Evidence EvidenceFunc
	// Tee is the tee name sent in /auth ("snp", "tpm", "tdx"; TeeName maps
	// a platform); "" means "snp".
	Tee string
	// Attempts for transient failures (network, 5xx); 0 means 3.
	Attempts int
	// Log; nil discards.
	Log *slog.Logger
}

// Client releases keys from a KBS.
type Client struct {
	cfg Config
	log *slog.Logger
}

// New returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.HTTP == nil || cfg.Evidence == nil {
		return nil, errors.New("kbs: Config needs HTTP and Evidence")
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: log}, nil
}

// Request is the auth request body.
type Request struct {
	Version     string          `json:"version"`
	Tee         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Challenge is the auth response body.
type Challenge struct {
	Nonce       string          `json:"nonce"`
	ExtraParams json.RawMessage `json:"extra-params,omitempty"`
}

// RuntimeData is what the evidence is bound to.
type RuntimeData struct {
	Nonce     string          `json:"nonce"`
	TeePubKey json.RawMessage `json:"tee-pubkey"`
}

// Attestation is the attest request body.
type Attestation struct {
	RuntimeData RuntimeData `json:"runtime-data"`
	TeeEvidence TeeEvidence `json:"tee-evidence"`
}

// TeeEvidence carries cvmd's EAT.
type TeeEvidence struct {
	Primary    PrimaryEvidence `json:"primary_evidence"`
	Additional string          `json:"additional_evidence"`
}

// PrimaryEvidence is cvmd's EAT token and the platform that made it.
type PrimaryEvidence struct {
	EAT      []byte `json:"eat"` // base64 in JSON
	Platform string `json:"platform"`
}

// HashAlgorithms the client supports, in order of preference.
var HashAlgorithms = []string{"sha384", "sha256", "sha512"}

// Binding returns the report data (the selected hash) and the vTPM nonce
// (SHA-256) that bind evidence to a challenge nonce and TEE public key
// (its JWK JSON): both over the canonical JSON of {"additional-evidence":
// additional, "nonce", "tee-pubkey"} (sorted keys, no white space).
func Binding(hashAlg, nonce string, teePubKey json.RawMessage, additional string) (reportData, vtpmNonce []byte, err error) {
	var jwk any
	if err := json.Unmarshal(teePubKey, &jwk); err != nil {
		return nil, nil, fmt.Errorf("kbs: tee-pubkey: %w", err)
	}
	canon, err := canonicalJSON(map[string]any{"additional-evidence": additional, "nonce": nonce, "tee-pubkey": jwk})
	if err != nil {
		return nil, nil, err
	}
	var h hash.Hash
	switch hashAlg {
	case "sha256":
		h = sha256.New()
	case "sha384", "":
		h = sha512.New384() // Trustee's default
	case "sha512":
		h = sha512.New()
	default:
		return nil, nil, fmt.Errorf("%w: hash algorithm %q", ErrRefused, hashAlg)
	}
	h.Write(canon)
	v := sha256.Sum256(canon)
	return h.Sum(nil), v[:], nil
}

// canonicalJSON is sorted keys, no white space, no HTML escaping (as
// serde_json's canonical form).
func canonicalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // maps encode with sorted keys
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// SelectedHash reads the challenge's extra-params ("selected-hash-algorithm"),
// which Trustee sends as an object or as a JSON string; "" = the default.
func SelectedHash(extra json.RawMessage) string {
	var p struct {
		Alg string `json:"selected-hash-algorithm"`
	}
	if json.Unmarshal(extra, &p) == nil {
		return p.Alg
	}
	var s string
	if json.Unmarshal(extra, &s) == nil && json.Unmarshal([]byte(s), &p) == nil {
		return p.Alg
	}
	return ""
}

// TeeName is the tee value for /auth for a cvmd platform name.
func TeeName(platform string) string {
	switch platform {
	case "vTPM":
		return "tpm"
	case "TDX":
		return "tdx"
	}
	return "snp"
}

// ValidResourcePath checks <repo>/<type>/<tag>.
func ValidResourcePath(p string) error {
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return fmt.Errorf("kbs: resource path %q is not <repo>/<type>/<tag>", p)
	}
	for _, s := range parts {
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "?#%\\") {
			return fmt.Errorf("kbs: resource path %q has an empty or unsafe part", p)
		}
	}
	return nil
}

// Key runs the whole exchange with the KBS at kbsURL and returns the
// resource at resourcePath, decrypted: for Cocos's encrypted resources, a
// 32-byte AES key. Every failure names the step.
func (c *Client) Key(ctx context.Context, kbsURL, resourcePath string) ([]byte, error) {
	if err := ValidResourcePath(resourcePath); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	base, err := url.Parse(strings.TrimSuffix(kbsURL, "/"))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("%w: KBS URL %q is not http(s)://host[:port]", ErrRefused, kbsURL)
	}
	var last error
	for attempt := 0; attempt < c.cfg.Attempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		// Each exchange is bounded: a KBS that stops answering is retried.
		sctx, cancel := context.WithTimeout(ctx, sessionTimeout)
		key, err := c.session(sctx, base.String(), resourcePath)
		cancel()
		if err == nil || errors.Is(err, ErrRefused) || ctx.Err() != nil {
			return key, err
		}
		last = err
		c.log.Warn("kbs: retrying", "kbs", kbsURL, "resource", resourcePath, "err", err.Error())
	}
	return nil, last
}

// session is one auth → attest → resource exchange on one cookie session.
func (c *Client) session(ctx context.Context, base, resourcePath string) ([]byte, error) {
	// A fresh TEE key for every exchange: the KBS encrypts to it, and it
	// never leaves this process.
	teeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	jwk, err := json.Marshal(jose.JSONWebKey{Key: &teeKey.PublicKey, Algorithm: string(jose.ECDH_ES_A256KW)})
	if err != nil {
		return nil, err
	}
	extra, _ := json.Marshal(map[string]any{"supported-hash-algorithms": HashAlgorithms})
	tee := c.cfg.Tee
	if tee == "" {
		tee = "snp"
	}
	var ch Challenge
	cookie, err := c.post(ctx, base+"/kbs/v0/auth", "", Request{Version: ProtocolVersion, Tee: tee, ExtraParams: extra}, &ch, "auth")
	if err != nil {
		return nil, err
	}
	if ch.Nonce == "" {
		return nil, fmt.Errorf("%w: auth: the challenge has no nonce", ErrRefused)
	}
	rd := RuntimeData{Nonce: ch.Nonce, TeePubKey: jwk}
	reportData, vtpmNonce, err := Binding(SelectedHash(ch.ExtraParams), ch.Nonce, jwk, "")
	if err != nil {
		return nil, err
	}
	if len(reportData) > 64 {
		reportData = reportData[:64]
	}
	token, platform, err := c.cfg.Evidence(ctx, reportData, vtpmNonce)
	if err != nil {
		return nil, fmt.Errorf("%w: evidence for the KBS: %v", ErrRefused, err)
	}
	var res struct {
		Token string `json:"token"`
	}
	att := Attestation{RuntimeData: rd, TeeEvidence: TeeEvidence{Primary: PrimaryEvidence{EAT: token, Platform: platform}}}
	if _, err := c.post(ctx, base+"/kbs/v0/attest", cookie, att, &res, "attest"); err != nil {
		return nil, err
	}
	body, err := c.get(ctx, base+"/kbs/v0/resource/"+resourcePath, cookie, res.Token)
	if err != nil {
		return nil, err
	}
	obj, err := jose.ParseEncryptedJSON(string(body), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("%w: resource %q: not a JWE with alg ECDH-ES+A256KW and enc A256GCM: %v", ErrRefused, resourcePath, err)
	}
	key, err := obj.Decrypt(teeKey)
	if err != nil {
		return nil, fmt.Errorf("%w: resource %q: decrypting the JWE: %v", ErrRefused, resourcePath, err)
	}
	return key, nil
}

// sessionTimeout bounds one auth → attest → resource exchange.
const sessionTimeout = 2 * time.Minute

// maxAnswer bounds what the KBS may send.
const maxAnswer = 1 << 20

func (c *Client) post(ctx context.Context, u, cookie string, in, out any, step string) (string, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	res, body, err := c.do(req, step)
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return "", fmt.Errorf("%w: %s: answer is not JSON: %v", ErrRefused, step, err)
	}
	if cookie == "" {
		for _, ck := range res.Cookies() {
			if ck.Name == "kbs-session-id" {
				cookie = ck.Name + "=" + ck.Value
			}
		}
		if cookie == "" {
			return "", fmt.Errorf("%w: %s: no kbs-session-id cookie", ErrRefused, step)
		}
	}
	return cookie, nil
}

func (c *Client) get(ctx context.Context, u, cookie, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Cookie", cookie)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(token))
	}
	_, body, err := c.do(req, "resource")
	return body, err
}

// do sends req; a status other than 200 is a refusal (4xx) or transient (5xx).
func (c *Client) do(req *http.Request, step string) (*http.Response, []byte, error) {
	res, err := c.cfg.HTTP.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("kbs: %s: %w", step, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxAnswer))
	if err != nil {
		return nil, nil, fmt.Errorf("kbs: %s: reading the answer: %w", step, err)
	}
	if res.StatusCode != http.StatusOK {
		text := strings.TrimSpace(string(body))
		if len(text) > 300 {
			text = text[:300] + "…"
		}
		if res.StatusCode >= 500 {
			return nil, nil, fmt.Errorf("kbs: %s: HTTP %s: %s", step, res.Status, text)
		}
		return nil, nil, fmt.Errorf("%w: %s: HTTP %s: %s", ErrRefused, step, res.Status, text)
	}
	return res, body, nil
}

// EncodeEAT is base64 as the JSON of PrimaryEvidence carries it (for
// servers that decode by hand).
func EncodeEAT(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
