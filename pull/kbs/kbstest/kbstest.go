// Package kbstest is a KBS TEST SERVER, written from Trustee's KBS protocol
// for cvmd's tests only: it is not Trustee, not hardened, keeps everything
// in memory, and nothing in the guest imports it.
//
// It does what a KBS must to make the tests mean something: every session
// gets a fresh nonce; /attest recomputes the binding (pull/kbs.Binding) from
// the runtime data it is sent, refuses a nonce other than the session's, and
// verifies the EAT with cvmd's own verifier (attest/verify) against
// Options — report data, vTPM nonce, signatures, simulated platforms, the
// policy's measurement; /resource releases a resource only to an attested
// session (cookie or its bearer token), encrypted as a JWE to the TEE key
// the evidence was bound to.
package kbstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/pull/kbs"
)

// Server is the test KBS.
type Server struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Verify is what evidence must pass (ReportData and Nonce are filled
	// in per session).
	Verify verify.Options
	// RefuseResources answers every resource request 403.
	RefuseResources atomic.Bool
	// ContentEncryption overrides A256GCM in the JWE (to test the client's
	// check); "" = A256GCM.
	ContentEncryption jose.ContentEncryption

	// Auths, Attests, Releases count the requests that succeeded.
	Auths, Attests, Releases atomic.Int64
	// LastRefusal is the text of the last refusal.
	lastRefusal atomic.Value

	mu        sync.Mutex
	resources map[string][]byte   // guarded by mu
	sessions  map[string]*session // guarded by mu; by cookie value
	tokens    map[string]*session // guarded by mu; by bearer token
	signer    jose.Signer
	srv       *http.Server
}

type session struct {
	nonce    string
	attested bool
	teeKey   *jose.JSONWebKey
	created  time.Time
}

// Start serves on a free loopback port with TLS from cert; the caller's
// client must trust its CA.
func Start(t testing.TB, cert tls.Certificate) *Server {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{resources: map[string][]byte{}, sessions: map[string]*session{}, tokens: map[string]*session{}, signer: signer}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /kbs/v0/auth", s.auth)
	mux.HandleFunc("POST /kbs/v0/attest", s.attest)
	mux.HandleFunc("GET /kbs/v0/resource/{repo}/{type}/{tag}", s.resource)
	s.srv = &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 10 * time.Second}
	s.URL = "https://" + ln.Addr().String()
	go s.srv.Serve(tls.NewListener(ln, s.srv.TLSConfig))
	t.Cleanup(func() { s.srv.Close() })
	return s
}

// HostPort is the server's address.
func (s *Server) HostPort() string { return strings.TrimPrefix(s.URL, "https://") }

// SetResource stores a resource at <repo>/<type>/<tag>.
func (s *Server) SetResource(path string, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resources[path] = value
}

// LastRefusal is why the server last said no ("" if it never did).
func (s *Server) LastRefusal() string {
	v, _ := s.lastRefusal.Load().(string)
	return v
}

func (s *Server) refuse(w http.ResponseWriter, code int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.lastRefusal.Store(msg)
	http.Error(w, msg, code)
}

func (s *Server) auth(w http.ResponseWriter, r *http.Request) {
	var req kbs.Request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		s.refuse(w, 400, "auth: %v", err)
		return
	}
	if req.Version != kbs.ProtocolVersion {
		s.refuse(w, 400, "auth: protocol version %q, want %q", req.Version, kbs.ProtocolVersion)
		return
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	id := make([]byte, 16)
	rand.Read(id)
	sess := &session{nonce: base64.StdEncoding.EncodeToString(nonce), created: time.Now()}
	s.mu.Lock()
	s.sessions[hex.EncodeToString(id)] = sess
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: "kbs-session-id", Value: hex.EncodeToString(id), Path: "/kbs", HttpOnly: true, Secure: true})
	json.NewEncoder(w).Encode(kbs.Challenge{Nonce: sess.nonce, ExtraParams: json.RawMessage(`{"selected-hash-algorithm":"sha384"}`)})
	s.Auths.Add(1)
}

func (s *Server) sessionOf(r *http.Request) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, err := r.Cookie("kbs-session-id"); err == nil {
		if sess := s.sessions[c.Value]; sess != nil {
			return sess
		}
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return s.tokens[tok]
	}
	return nil
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	sess := s.sessionOf(r)
	if sess == nil {
		s.refuse(w, 401, "attest: no session")
		return
	}
	var att kbs.Attestation
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&att); err != nil {
		s.refuse(w, 400, "attest: %v", err)
		return
	}
	if att.RuntimeData.Nonce != sess.nonce {
		s.refuse(w, 401, "attest: runtime-data nonce %q is not this session's", att.RuntimeData.Nonce)
		return
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(att.RuntimeData.TeePubKey); err != nil || !jwk.Valid() || !jwk.IsPublic() {
		s.refuse(w, 400, "attest: tee-pubkey is not a public JWK: %v", err)
		return
	}
	reportData, vtpmNonce, err := kbs.Binding("sha384", att.RuntimeData.Nonce, att.RuntimeData.TeePubKey, att.TeeEvidence.Additional)
	if err != nil {
		s.refuse(w, 400, "attest: %v", err)
		return
	}
	o := s.Verify
	o.ReportData, o.Nonce = reportData, vtpmNonce
	if _, err := verify.Token(att.TeeEvidence.Primary.EAT, o); err != nil {
		s.refuse(w, 401, "attest: evidence refused: %v", err)
		return
	}
	claims, _ := json.Marshal(map[string]any{"exp": time.Now().Add(5 * time.Minute).Unix(), "tee-pubkey": json.RawMessage(att.RuntimeData.TeePubKey), "platform": att.TeeEvidence.Primary.Platform})
	jws, err := s.signer.Sign(claims)
	if err != nil {
		s.refuse(w, 500, "attest: signing: %v", err)
		return
	}
	tok, _ := jws.CompactSerialize()
	s.mu.Lock()
	sess.attested, sess.teeKey = true, &jwk
	s.tokens[tok] = sess
	s.mu.Unlock()
	json.NewEncoder(w).Encode(map[string]string{"token": tok})
	s.Attests.Add(1)
}

func (s *Server) resource(w http.ResponseWriter, r *http.Request) {
	sess := s.sessionOf(r)
	if sess == nil || !sess.attested {
		s.refuse(w, 401, "resource: not attested")
		return
	}
	if s.RefuseResources.Load() {
		s.refuse(w, 403, "resource: policy denies this CVM the resource")
		return
	}
	path := r.PathValue("repo") + "/" + r.PathValue("type") + "/" + r.PathValue("tag")
	s.mu.Lock()
	val, ok := s.resources[path]
	s.mu.Unlock()
	if !ok {
		s.refuse(w, 404, "resource %q not found", path)
		return
	}
	enc := s.ContentEncryption
	if enc == "" {
		enc = jose.A256GCM
	}
	e, err := jose.NewEncrypter(enc, jose.Recipient{Algorithm: jose.ECDH_ES_A256KW, Key: sess.teeKey.Key}, nil)
	if err != nil {
		s.refuse(w, 500, "resource: %v", err)
		return
	}
	obj, err := e.Encrypt(val)
	if err != nil {
		s.refuse(w, 500, "resource: %v", err)
		return
	}
	w.Write([]byte(obj.FullSerialize()))
	s.Releases.Add(1)
}
