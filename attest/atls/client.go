package atls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"
)

// Expected is what the evidence must show for this connection.
type Expected struct {
	ReportData [64]byte // SHA-512(binding): SNP/TDX REPORT_DATA
	Nonce      [32]byte // SHA-256(exported): vTPM quote nonce and EAT eat_nonce
	Binding    []byte
	Leaf       *x509.Certificate // the key the evidence vouches for
}

// EvidenceVerifier checks evidence (an EAT token) against a policy and
// against want: signatures up to a trusted root, report data and nonce equal
// to want's, measurements. attest/atlsverify provides one.
type EvidenceVerifier func(ctx context.Context, evidence []byte, want Expected) error

// ClientConfig configures the client side.
type ClientConfig struct {
	// TLS is the base TLS configuration (client certificate for maTLS,
	// RootCAs to also verify the server's chain). It is cloned; TLS 1.3 and
	// ALPN h2 are forced. Without RootCAs the server certificate is not
	// checked against a CA: trust comes from the attestation bound to it.
	TLS *tls.Config
	// Context is the certificate_request_context; nil means 32 fresh random
	// bytes per connection (the only safe choice outside tests).
	Context []byte
	// VerifyEvidence is required: without it every connection fails.
	VerifyEvidence EvidenceVerifier
	// OnVerified, if set, is told about each verified connection.
	OnVerified func(*Result)
}

// Result describes a verified connection.
type Result struct {
	Request  *Request
	Payload  *Payload
	Expected Expected
	Chain    []*x509.Certificate
}

func (cfg *ClientConfig) tlsConfig(serverName string) *tls.Config {
	c := &tls.Config{}
	if cfg.TLS != nil {
		c = cfg.TLS.Clone()
	}
	c.MinVersion, c.MaxVersion = tls.VersionTLS13, 0
	c.NextProtos = []string{"h2"}
	if c.RootCAs == nil {
		c.InsecureSkipVerify = true // the authenticator and evidence carry the trust
	} else if c.ServerName == "" {
		c.ServerName = serverName
	}
	return c
}

// Client runs the client side over raw (a fresh connection to the server).
// On success the returned *tls.Conn carries HTTP/2 with prior knowledge.
// Any failure closes nothing: the caller closes raw.
func Client(ctx context.Context, raw net.Conn, serverName string, cfg *ClientConfig) (*tls.Conn, *Result, error) {
	if cfg.VerifyEvidence == nil {
		return nil, nil, fail(CheckEvidenceMissing, "no evidence verifier configured")
	}
	// Bound the frames as well as the handshake by ctx's deadline.
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
		defer raw.SetDeadline(time.Time{})
	}
	conn := tls.Client(raw, cfg.tlsConfig(serverName))
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, nil, wrap(CheckTLS, err)
	}
	st := conn.ConnectionState()
	keys, err := exportSessionKeys(&st)
	if err != nil {
		return nil, nil, wrap(CheckTLS, err)
	}
	reqCtx := cfg.Context
	if reqCtx == nil {
		reqCtx = make([]byte, 32)
		if _, err := rand.Read(reqCtx); err != nil {
			return nil, nil, err
		}
	}
	req := NewRequest(reqCtx)
	reqBytes, err := req.Marshal()
	if err != nil {
		return nil, nil, err
	}
	if err := WriteFrame(conn, FrameRequest, reqBytes); err != nil {
		return nil, nil, wrap(CheckFrame, err)
	}
	typ, authBytes, err := ReadFrame(conn, MaxFrame)
	if err != nil {
		return nil, nil, wrap(CheckFrame, err)
	}
	if typ != FrameAuthenticator {
		return nil, nil, fail(CheckFrame, "frame type %d, want %d (authenticator)", typ, FrameAuthenticator)
	}
	res, err := verifyAuthenticator(ctx, &st, keys, req, reqBytes, authBytes, cfg)
	if err != nil {
		return nil, nil, err
	}
	if cfg.OnVerified != nil {
		cfg.OnVerified(res)
	}
	return conn, res, nil
}

// verifyAuthenticator performs every check on a received authenticator, in
// the order of the Check* constants; the first failure is returned.
func verifyAuthenticator(ctx context.Context, st *tls.ConnectionState, keys *sessionKeys, req *Request, reqBytes, authBytes []byte, cfg *ClientConfig) (*Result, error) {
	a, err := ParseAuthenticator(authBytes)
	if err != nil {
		return nil, wrap(CheckAuthenticator, err)
	}
	if !bytes.Equal(a.Context, req.Context) {
		return nil, fail(CheckContext, "authenticator context %x, request context %x", a.Context, req.Context)
	}
	for i, e := range a.Entries[1:] {
		if _, ok := findExtension(e.Extensions, extCMWAttestation); ok {
			return nil, fail(CheckExtensions, "CMW extension on certificate %d, allowed on the leaf only", i+1)
		}
	}
	for _, e := range a.Entries[0].Extensions {
		if e.Type != extCMWAttestation {
			return nil, fail(CheckExtensions, "leaf carries extension 0x%04x that was not requested", e.Type)
		}
	}
	cmw, present, err := cmwPayload(a.Entries[0])
	if err != nil {
		return nil, wrap(CheckExtensions, err)
	}
	if !present {
		return nil, fail(CheckExtensions, "leaf carries no CMW attestation extension")
	}
	if a.Scheme != schemeECDSAP256SHA256 {
		return nil, fail(CheckSignatureScheme, "scheme 0x%04x was not offered (only 0x0403)", a.Scheme)
	}
	chain := make([]*x509.Certificate, len(a.Entries))
	for i, e := range a.Entries {
		if chain[i], err = x509.ParseCertificate(e.DER); err != nil {
			return nil, fail(CheckLeaf, "certificate %d: %v", i, err)
		}
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fail(CheckSignatureScheme, "leaf key is %T, scheme 0x0403 needs ECDSA P-256", leaf.PublicKey)
	}
	digest := sha256.Sum256(signedContent(keys.transcript(reqBytes, a.rawCertificate)))
	if !ecdsa.VerifyASN1(pub, digest[:], a.Signature) {
		return nil, fail(CheckSignature, "signature does not verify with the leaf key")
	}
	want := keys.finished(keys.transcript(reqBytes, a.rawCertificate, a.rawCertificateVerify))
	if subtle.ConstantTimeCompare(want, a.VerifyData) != 1 {
		return nil, fail(CheckFinished, "MAC does not match this session's finished key")
	}
	if len(st.PeerCertificates) == 0 || !bytes.Equal(st.PeerCertificates[0].Raw, leaf.Raw) {
		return nil, fail(CheckLeaf, "authenticator leaf is not the TLS server certificate")
	}
	p, err := ParsePayload(cmw)
	if err != nil {
		return nil, wrap(CheckPayload, err)
	}
	b, err := ComputeBinding(st, req.Context, leaf.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, wrap(CheckBinding, err)
	}
	if subtle.ConstantTimeCompare(b.AIKPubHash, p.Binder.AIKPubHash) != 1 {
		return nil, fail(CheckAIKPubHash, "payload %x, leaf key gives %x", p.Binder.AIKPubHash, b.AIKPubHash)
	}
	if subtle.ConstantTimeCompare(b.Binding, p.Binder.Binding) != 1 {
		return nil, fail(CheckBinding, "payload %x, this session gives %x", p.Binder.Binding, b.Binding)
	}
	exp := Expected{ReportData: b.ReportData, Nonce: b.Nonce, Binding: b.Binding, Leaf: leaf}
	if err := checkEATNonce(p.Evidence, exp); err != nil {
		return nil, wrap(CheckEvidenceNonce, err)
	}
	if err := cfg.VerifyEvidence(ctx, p.Evidence, exp); err != nil {
		return nil, wrap(CheckEvidencePolicy, err)
	}
	return &Result{Request: req, Payload: p, Expected: exp, Chain: chain}, nil
}

// checkEATNonce requires the EAT's eat_nonce to be the nonce (or report
// data) derived from this session's binding: a token made for another
// session, however valid, is refused here.
func checkEATNonce(evidence []byte, want Expected) error {
	nonces, err := EATNonces(evidence)
	if err != nil {
		return err
	}
	for _, n := range nonces {
		if bytes.Equal(n, want.Nonce[:]) || bytes.Equal(n, want.ReportData[:]) {
			return nil
		}
	}
	return fmt.Errorf("eat_nonce %x is neither SHA-256(exported) %x nor SHA-512(binding)", nonces[0], want.Nonce)
}

// Dialer returns a dial function for grpc.WithContextDialer: TCP to addr,
// then the aTLS exchange. gRPC must then use insecure transport credentials
// (the returned connection is already secured), as Cocos's client does.
func (cfg *ClientConfig) Dialer() func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(addr)
		conn, _, err := Client(ctx, raw, host, cfg)
		if err != nil {
			raw.Close()
			return nil, err
		}
		return conn, nil
	}
}

// IsCheckError reports whether err is an aTLS check failure.
func IsCheckError(err error) bool {
	var ce *CheckError
	return errors.As(err, &ce)
}
