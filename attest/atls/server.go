package atls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"time"
)

// EvidenceFunc obtains evidence (an EAT token) whose report data and nonce
// are the given values. The ingress asks the attestation child.
type EvidenceFunc func(ctx context.Context, reportData [64]byte, nonce [32]byte) ([]byte, error)

// ServerConfig configures the server side of the exchange.
type ServerConfig struct {
	// Identity is the certificate the authenticator presents; it must be the
	// one the TLS handshake presented, and its key must be ECDSA P-256 (the
	// only scheme Cocos's client offers).
	Identity tls.Certificate
	// Evidence is called once per connection. Required.
	Evidence EvidenceFunc
}

// CheckIdentity reports why id cannot serve aTLS, or nil.
func CheckIdentity(id tls.Certificate) error {
	if len(id.Certificate) == 0 {
		return fmt.Errorf("atls: identity has no certificate")
	}
	k, ok := id.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("atls: identity key is %T, want ECDSA P-256", id.PrivateKey)
	}
	return nil
}

// NewEphemeralIdentity returns a fresh self-signed ECDSA P-256 certificate
// (CN cvmd-atls-ephemeral, SAN localhost, valid 24 h), for aTLS without a
// configured certificate: trust comes from the attestation, not the CA.
func NewEphemeralIdentity() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "cvmd-atls-ephemeral", Organization: []string{"cvmd"}},
		DNSNames:              []string{"localhost"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Serve runs the server side of the exchange on conn: the TLS handshake if
// not yet done, the request frame, evidence, the authenticator frame. On
// success conn carries the application protocol next. The caller bounds the
// whole exchange with a deadline on conn and with ctx.
func Serve(ctx context.Context, conn *tls.Conn, cfg *ServerConfig) error {
	if cfg.Evidence == nil {
		return fmt.Errorf("atls: server has no evidence source")
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return wrap(CheckTLS, err)
	}
	st := conn.ConnectionState()
	keys, err := exportSessionKeys(&st)
	if err != nil {
		return wrap(CheckTLS, err)
	}
	typ, reqBytes, err := ReadFrame(conn, maxRequestFrame)
	if err != nil {
		return wrap(CheckFrame, err)
	}
	if typ != FrameRequest {
		return fail(CheckFrame, "frame type %d, want %d (request)", typ, FrameRequest)
	}
	req, err := ParseRequest(reqBytes)
	if err != nil {
		return wrap(CheckRequest, err)
	}
	schemes, err := req.SignatureSchemes()
	if err != nil {
		return wrap(CheckRequest, err)
	}
	if !slices.Contains(schemes, schemeECDSAP256SHA256) {
		return fail(CheckRequest, "signature schemes %04x do not include ecdsa_secp256r1_sha256", schemes)
	}
	if !req.offersCMW() {
		return fail(CheckRequest, "request does not offer the CMW attestation extension 0xFF00")
	}
	auth, err := buildAuthenticator(ctx, &st, keys, req, reqBytes, cfg)
	if err != nil {
		return err
	}
	if err := WriteFrame(conn, FrameAuthenticator, auth); err != nil {
		return wrap(CheckFrame, err)
	}
	return nil
}

// buildAuthenticator makes Certificate ‖ CertificateVerify ‖ Finished over
// the request exactly as received.
func buildAuthenticator(ctx context.Context, st *tls.ConnectionState, keys *sessionKeys, req *Request, reqBytes []byte, cfg *ServerConfig) ([]byte, error) {
	if err := CheckIdentity(cfg.Identity); err != nil {
		return nil, err
	}
	leaf := cfg.Identity.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cfg.Identity.Certificate[0]); err != nil {
			return nil, fmt.Errorf("atls: parsing identity: %w", err)
		}
	}
	b, err := ComputeBinding(st, req.Context, leaf.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, wrap(CheckTLS, err)
	}
	evidence, err := cfg.Evidence(ctx, b.ReportData, b.Nonce)
	if err != nil {
		return nil, fmt.Errorf("atls: obtaining evidence: %w", err)
	}
	payload, err := json.Marshal(Payload{
		Version:   1,
		MediaType: mediaTypeEAT,
		Evidence:  evidence,
		Binder:    Binder{ExporterLabel: ExporterLabel, AIKPubHash: b.AIKPubHash, Binding: b.Binding},
	})
	if err != nil {
		return nil, err
	}
	ext, err := cmwExtension(payload)
	if err != nil {
		return nil, err
	}
	entries := make([]CertEntry, len(cfg.Identity.Certificate))
	for i, der := range cfg.Identity.Certificate {
		entries[i].DER = der
	}
	entries[0].Extensions = []Extension{ext}
	cert, err := marshalCertificate(req.Context, entries)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(signedContent(keys.transcript(reqBytes, cert)))
	sig, err := ecdsa.SignASN1(rand.Reader, cfg.Identity.PrivateKey.(*ecdsa.PrivateKey), digest[:])
	if err != nil {
		return nil, fmt.Errorf("atls: signing CertificateVerify: %w", err)
	}
	cv, err := marshalCertificateVerify(schemeECDSAP256SHA256, sig)
	if err != nil {
		return nil, err
	}
	fin, err := appendHandshake(nil, typeFinished, keys.finished(keys.transcript(reqBytes, cert, cv)))
	if err != nil {
		return nil, err
	}
	out := append(cert, cv...)
	return append(out, fin...), nil
}

// ServerTLSConfig returns the TLS settings aTLS needs on the server: TLS 1.3
// only, ALPN h2 and http/1.1 (as Cocos), the identity as certificate. The
// caller adds client authentication (maTLS) if wanted.
func ServerTLSConfig(id tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id},
		NextProtos:   []string{"h2", "http/1.1"},
	}
}
