// Package maatest is a loopback stand-in for a Microsoft Azure Attestation
// instance, for tests only: MAA is Microsoft's cloud service and cannot run
// here. It serves TdxVm attestations and its signing keys (/certs) over
// TLS, and before it signs a token it checks the evidence as MAA does for
// an Azure TDX confidential VM:
//
//   - the request is POST /attest/TdxVm?api-version=maa.APIVersion, JSON,
//     with a quote, runtime data of type JSON and a nonce;
//   - the quote is a TDX QuoteV4 whose PCK chain leads to a trusted root
//     and whose signatures verify (go-tdx-guest); the root is SetRoots's, or,
//     by default, the root the quote carries (a simulated TD's test-only
//     root: MAA trusts Intel's, and also checks the TCB against Intel's
//     collateral, which this stand-in does not);
//   - REPORTDATA[0:32] is SHA-256 of the runtime data, so the claims are
//     the TD's;
//   - the claims' user-data is the nonce's (maa.UserData): the HCL report
//     was made for this request.
//
// The token is RS256 over MAA's claim names (iss = the server's URL, iat,
// nbf, exp, jti, x-ms-attestation-type "tdxvm", x-ms-runtime = the claims,
// tdx_mrtd, tdx_report_data, x-ms-ver); evidence that fails a check is
// answered 400 with an MAA-style error body naming it.
//
// maatest imports attest/maa and go-tdx-guest; only tests import it.
package maatest

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/cvmd/cvmd/attest/maa"
)

var b64 = base64.RawURLEncoding

// Kid names the stand-in's signing key in its tokens and JWKS.
const Kid = "cvmd-maatest-1"

// Server is a running stand-in.
type Server struct {
	// URL is the instance's URL (https://127.0.0.1:port), the tokens' issuer.
	URL string

	srv *httptest.Server
	key *rsa.PrivateKey

	mu       sync.Mutex
	roots    *x509.CertPool              // guarded by mu; see SetRoots
	tamper   func(claims map[string]any) // guarded by mu; see SetTamper
	attested int                         // guarded by mu; tokens issued
	refused  []string                    // guarded by mu
}

// SetRoots sets the TDX roots quotes must lead to; nil (the default): each
// quote's own root.
func (s *Server) SetRoots(p *x509.CertPool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roots = p
}

// SetTamper has f change the claims of the next tokens before they are
// signed (a test of what a token's reader must refuse); nil stops it.
func (s *Server) SetTamper(f func(claims map[string]any)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tamper = f
}

// Start starts a stand-in on loopback; it stops with Close.
func Start() (*Server, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	s := &Server{key: k}
	mux := http.NewServeMux()
	mux.HandleFunc("/attest/TdxVm", s.attest)
	mux.HandleFunc("GET /certs", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(s.JWKS())
	})
	s.srv = httptest.NewTLSServer(mux)
	s.URL = s.srv.URL
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// CAPEM is the PEM of the certificate the server's TLS presents (self-signed,
// for 127.0.0.1): what a client must trust to reach it.
func (s *Server) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

// JWKS is the server's signing keys, as MAA serves them at /certs.
func (s *Server) JWKS() []byte {
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kid": Kid, "kty": "RSA", "use": "sig", "alg": "RS256",
		"n": b64.EncodeToString(s.key.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(s.key.E)).Bytes()),
	}}})
	return b
}

// Issued is how many tokens were issued; Refused the reasons of refusals.
func (s *Server) Issued() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attested, append([]string(nil), s.refused...)
}

func (s *Server) refuse(w http.ResponseWriter, code, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.refused = append(s.refused, code+": "+msg)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Query().Get("api-version") != maa.APIVersion || r.Header.Get("Content-Type") != "application/json" {
		s.refuse(w, "InvalidRequest", "want POST /attest/TdxVm?api-version=%s with JSON, got %s %s (%s)", maa.APIVersion, r.Method, r.URL.RequestURI(), r.Header.Get("Content-Type"))
		return
	}
	var req maa.TDXRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maa.MaxResponse))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.refuse(w, "InvalidParameter", "request body: %v", err)
		return
	}
	quote, err1 := b64.DecodeString(req.Quote)
	claimsJSON, err2 := b64.DecodeString(req.RuntimeData.Data)
	nonce, err3 := b64.DecodeString(req.Nonce)
	if err1 != nil || err2 != nil || err3 != nil {
		s.refuse(w, "InvalidParameter", "quote, runtimeData.data and nonce must be base64url")
		return
	}
	if req.RuntimeData.DataType != "JSON" {
		s.refuse(w, "InvalidParameter", "runtimeData.dataType %q: the HCL's runtime claims are JSON", req.RuntimeData.DataType)
		return
	}
	q, err := s.checkQuote(quote)
	if err != nil {
		s.refuse(w, "InvalidQuote", "%v", err)
		return
	}
	rd := q.GetTdQuoteBody().GetReportData()
	if h := sha256.Sum256(claimsJSON); !bytes.Equal(rd[:32], h[:]) {
		s.refuse(w, "RuntimeDataMismatch", "REPORTDATA[0:32] %x is not SHA-256 of the runtime data %x", rd[:32], h)
		return
	}
	var claims map[string]any
	if err := json.Unmarshal(claimsJSON, &claims); err != nil {
		s.refuse(w, "InvalidParameter", "runtime data: %v", err)
		return
	}
	ud := maa.UserData(nonce)
	if got, _ := claims["user-data"].(string); got != hex.EncodeToString(ud[:]) {
		s.refuse(w, "RuntimeDataMismatch", "the runtime claims' user-data %q is not the nonce's", got)
		return
	}
	now := time.Now()
	jti := make([]byte, 16)
	rand.Read(jti)
	tok := map[string]any{
		"iss": s.URL, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(8 * time.Hour).Unix(), "jti": hex.EncodeToString(jti),
		"x-ms-ver": "1.0", "x-ms-attestation-type": "tdxvm", "x-ms-runtime": claims,
		"tdx_mrtd": hex.EncodeToString(q.GetTdQuoteBody().GetMrTd()), "tdx_report_data": hex.EncodeToString(rd),
	}
	s.mu.Lock()
	tamper := s.tamper
	s.mu.Unlock()
	if tamper != nil {
		tamper(tok)
	}
	jwt, err := s.sign(tok)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	s.attested++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"token": jwt})
}

// checkQuote parses a QuoteV4 and checks its chain and signatures.
func (s *Server) checkQuote(raw []byte) (*tdxpb.QuoteV4, error) {
	parsed, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	q, ok := parsed.(*tdxpb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("quote is %T, want a QuoteV4", parsed)
	}
	s.mu.Lock()
	roots := s.roots
	s.mu.Unlock()
	if roots == nil {
		chain, err := tdxverify.ExtractChainFromQuote(q)
		if err != nil || chain.RootCertificate == nil {
			return nil, fmt.Errorf("quote's PCK chain: %v", err)
		}
		roots = x509.NewCertPool()
		roots.AddCert(chain.RootCertificate)
	}
	if err := tdxverify.TdxQuote(q, &tdxverify.Options{TrustedRoots: roots}); err != nil {
		return nil, fmt.Errorf("quote verification: %w", err)
	}
	return q, nil
}

func (s *Server) sign(claims map[string]any) (string, error) {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": Kid, "typ": "JWT", "jku": s.URL + "/certs"})
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	d := sha256.Sum256([]byte(in))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, d[:])
	if err != nil {
		return "", err
	}
	return in + "." + b64.EncodeToString(sig), nil
}
