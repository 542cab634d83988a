// Package intelpcs is the offline form of Intel PCS collateral (TDX TCB info,
// QE identity, PCK and root CA CRLs): a bundle of the HTTPS responses a
// verifier would have fetched from Intel's Provisioning Certification Service,
// recorded by URL, and a go-tdx-guest HTTPS getter that answers from it. A
// verifier given a bundle never touches the network; a URL the bundle does
// not hold is an error, not a fetch.
//
// A bundle for real hardware can be recorded with curl from
// https://api.trustedservices.intel.com (docs/attestation.md shows how);
// attest/sim writes one for its simulated TDX platform.
//
// intelpcs imports only go-tdx-guest's pcs and trust packages; anyone may
// import it.
package intelpcs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Bundle is recorded PCS responses by URL.
type Bundle struct {
	Responses map[string]Response `json:"responses"`
}

// Response is one recorded response.
type Response struct {
	// Header holds the response headers Intel sends (the issuer chains,
	// URL-escaped PEM, as go-tdx-guest reads them).
	Header map[string][]string `json:"header,omitempty"`
	// Body is the response body, base64.
	Body string `json:"body"`
}

// MaxBundle bounds a bundle file.
const MaxBundle = 4 << 20

// Parse decodes a bundle strictly.
func Parse(b []byte) (*Bundle, error) {
	if len(b) > MaxBundle {
		return nil, fmt.Errorf("intelpcs: bundle is %d bytes, at most %d", len(b), MaxBundle)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var bd Bundle
	if err := dec.Decode(&bd); err != nil {
		return nil, fmt.Errorf("intelpcs: bundle: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("intelpcs: bundle: trailing data")
	}
	if len(bd.Responses) == 0 {
		return nil, fmt.Errorf("intelpcs: bundle has no responses")
	}
	for u, r := range bd.Responses {
		if _, err := base64.StdEncoding.DecodeString(r.Body); err != nil {
			return nil, fmt.Errorf("intelpcs: bundle: %s: body is not base64: %w", u, err)
		}
	}
	return &bd, nil
}

// Marshal encodes a bundle.
func (b *Bundle) Marshal() ([]byte, error) { return json.Marshal(b) }

// Add records one response.
func (b *Bundle) Add(url string, header map[string][]string, body []byte) {
	if b.Responses == nil {
		b.Responses = map[string]Response{}
	}
	b.Responses[url] = Response{Header: header, Body: base64.StdEncoding.EncodeToString(body)}
}

// Get answers a go-tdx-guest collateral request from the bundle
// (trust.HTTPSGetter).
func (b *Bundle) Get(url string) (map[string][]string, []byte, error) {
	return b.GetContext(context.Background(), url)
}

// GetContext is Get (trust.ContextHTTPSGetter).
func (b *Bundle) GetContext(_ context.Context, url string) (map[string][]string, []byte, error) {
	r, ok := b.Responses[url]
	if !ok {
		have := make([]string, 0, len(b.Responses))
		for u := range b.Responses {
			have = append(have, u)
		}
		sort.Strings(have)
		return nil, nil, fmt.Errorf("intelpcs: the collateral bundle has no response for %s (it has %s); nothing is fetched from the network", url, strings.Join(have, ", "))
	}
	body, err := base64.StdEncoding.DecodeString(r.Body)
	if err != nil {
		return nil, nil, err
	}
	return r.Header, body, nil
}
