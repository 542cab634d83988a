package atls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// testSigner signs EATs in tests; testVerifier checks them. The signature is
// real (ES256 over the COSE Sig_structure): a token from any other key fails.
type testSigner struct{ key *ecdsa.PrivateKey }

func newTestSigner(t testing.TB) *testSigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{key: k}
}

func sigStructure(protected, payload []byte) []byte {
	b, _ := cbor.Marshal([]any{"Signature1", protected, []byte{}, payload})
	return b
}

// token returns a tagged COSE_Sign1 EAT with eat_nonce = nonce.
func (s *testSigner) token(nonce []byte) []byte {
	protected, _ := cbor.Marshal(map[int]int{1: -7})
	payload, _ := cbor.Marshal(map[any]any{10: nonce, "platform_type": "test"})
	d := sha256.Sum256(sigStructure(protected, payload))
	r, ss, _ := ecdsa.Sign(rand.Reader, s.key, d[:])
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	b, _ := cbor.Marshal(cbor.Tag{Number: 18, Content: []any{protected, map[any]any{}, payload, sig}})
	return b
}

func (s *testSigner) evidence(_ context.Context, _ [64]byte, nonce [32]byte) ([]byte, error) {
	return s.token(nonce[:]), nil
}

// verifier checks the COSE signature with the signer's key and the nonce.
func (s *testSigner) verifier() EvidenceVerifier {
	return func(_ context.Context, ev []byte, want Expected) error {
		var tag cbor.Tag
		if err := cbor.Unmarshal(ev, &tag); err != nil {
			return err
		}
		arr, ok := tag.Content.([]any)
		if !ok || len(arr) != 4 {
			return errors.New("not a COSE_Sign1")
		}
		protected, _ := arr[0].([]byte)
		payload, _ := arr[2].([]byte)
		sig, _ := arr[3].([]byte)
		if len(sig) != 64 {
			return errors.New("bad signature length")
		}
		d := sha256.Sum256(sigStructure(protected, payload))
		r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(&s.key.PublicKey, d[:], r, ss) {
			return errors.New("EAT signature does not verify")
		}
		n, err := EATNonces(ev)
		if err != nil || !bytes.Equal(n[0], want.Nonce[:]) {
			return fmt.Errorf("nonce mismatch")
		}
		return nil
	}
}

// pair runs server(conn) on one end of a loopback TCP connection and returns
// the other end.
func pair(t *testing.T, server func(net.Conn)) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		server(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); wg.Wait() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestExchangeSucceedsAndCarriesData(t *testing.T) {
	s := newTestSigner(t)
	id, err := NewEphemeralIdentity()
	if err != nil {
		t.Fatal(err)
	}
	c := pair(t, func(raw net.Conn) {
		conn := tls.Server(raw, ServerTLSConfig(id))
		if err := Serve(context.Background(), conn, &ServerConfig{Identity: id, Evidence: s.evidence}); err != nil {
			t.Errorf("server: %v", err)
			return
		}
		io.Copy(conn, conn) // echo
	})
	conn, res, err := Client(context.Background(), c, "localhost", &ClientConfig{VerifyEvidence: s.verifier()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.Chain[0].Raw, id.Certificate[0]) {
		t.Fatal("result leaf is not the server identity")
	}
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	conn.CloseWrite()
}

// TestRequestBytes pins the request encoding to §5.6, byte for byte.
func TestRequestBytes(t *testing.T) {
	ctx := bytes.Repeat([]byte{0xAB}, 32)
	want, _ := hex.DecodeString("1100002f20" + hex.EncodeToString(ctx) + "000c" + "000d0004" + "00020403" + "ff000000")
	got, err := NewRequest(ctx).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("request\n got %x\nwant %x", got, want)
	}
	r, err := ParseRequest(got)
	if err != nil || !bytes.Equal(r.Context, ctx) || !r.offersCMW() {
		t.Fatalf("round trip: %+v, %v", r, err)
	}
}

// forge is a misbehaving server: it builds an authenticator like Serve but
// lets a test change one thing.
type forge struct {
	id         tls.Certificate
	signer     *testSigner
	evidence   func(reportData [64]byte, nonce [32]byte) []byte // instead of signer
	reportData []byte                                           // report data asked of evidence instead of the true one
	context    []byte                                           // authenticator context instead of the request's
	binding    []byte                                           // binder.binding instead of the true one
	nonce      []byte                                           // eat_nonce instead of the true one
	scheme     uint16
	finished   []byte // Finished verify_data instead of the true MAC
	onlyFin    bool   // send a Finished-only (unsigned, empty) authenticator
	badSig     bool   // flip a bit of the signature
	replay     []byte // send these bytes as the authenticator
	capture    *[]byte
	tlsCert    *tls.Certificate // a different certificate for the TLS handshake
	cmwOnBoth  bool
}

func (f *forge) serve(t *testing.T) func(net.Conn) {
	return func(raw net.Conn) {
		tc := f.id
		if f.tlsCert != nil {
			tc = *f.tlsCert
		}
		conn := tls.Server(raw, ServerTLSConfig(tc))
		if err := conn.Handshake(); err != nil {
			return
		}
		st := conn.ConnectionState()
		keys, _ := exportSessionKeys(&st)
		_, reqBytes, err := ReadFrame(conn, 0)
		if err != nil {
			return
		}
		req, err := ParseRequest(reqBytes)
		if err != nil {
			t.Errorf("forge: %v", err)
			return
		}
		if f.replay != nil {
			WriteFrame(conn, FrameAuthenticator, f.replay)
			io.Copy(io.Discard, conn)
			return
		}
		ctx := req.Context
		if f.context != nil {
			ctx = f.context
		}
		if f.onlyFin {
			cert, _ := marshalCertificate(ctx, nil)
			fin, _ := appendHandshake(nil, typeFinished, keys.finished(keys.transcript(reqBytes, cert)))
			WriteFrame(conn, FrameAuthenticator, fin)
			io.Copy(io.Discard, conn)
			return
		}
		leaf, _ := x509.ParseCertificate(f.id.Certificate[0])
		b, _ := ComputeBinding(&st, req.Context, leaf.RawSubjectPublicKeyInfo)
		binding, nonce, rd := b.Binding, b.Nonce, b.ReportData
		if f.binding != nil {
			binding = f.binding
		}
		if f.nonce != nil {
			copy(nonce[:], f.nonce)
		}
		if f.reportData != nil {
			copy(rd[:], f.reportData)
		}
		var ev []byte
		if f.evidence != nil {
			ev = f.evidence(rd, nonce)
		} else {
			ev = f.signer.token(nonce[:])
		}
		payload, _ := json.Marshal(Payload{Version: 1, MediaType: mediaTypeEAT, Evidence: ev,
			Binder: Binder{ExporterLabel: ExporterLabel, AIKPubHash: b.AIKPubHash, Binding: binding}})
		ext, _ := cmwExtension(payload)
		entries := []CertEntry{{DER: f.id.Certificate[0], Extensions: []Extension{ext}}}
		if f.cmwOnBoth {
			entries = append(entries, CertEntry{DER: f.id.Certificate[0], Extensions: []Extension{ext}})
		}
		cert, _ := marshalCertificate(ctx, entries)
		d := sha256.Sum256(signedContent(keys.transcript(reqBytes, cert)))
		sig, _ := ecdsa.SignASN1(rand.Reader, f.id.PrivateKey.(*ecdsa.PrivateKey), d[:])
		if f.badSig {
			sig[len(sig)-1] ^= 1
		}
		scheme := uint16(schemeECDSAP256SHA256)
		if f.scheme != 0 {
			scheme = f.scheme
		}
		cv, _ := marshalCertificateVerify(scheme, sig)
		mac := keys.finished(keys.transcript(reqBytes, cert, cv))
		if f.finished != nil {
			mac = f.finished
		}
		fin, _ := appendHandshake(nil, typeFinished, mac)
		auth := append(append(cert, cv...), fin...)
		if f.capture != nil {
			*f.capture = auth
		}
		WriteFrame(conn, FrameAuthenticator, auth)
		io.Copy(io.Discard, conn)
	}
}

func TestClientRejects(t *testing.T) {
	s := newTestSigner(t)
	id, _ := NewEphemeralIdentity()
	other, _ := NewEphemeralIdentity()
	fixedCtx := bytes.Repeat([]byte{7}, 32)

	// An authenticator captured from a genuine session, for the replay case.
	var captured []byte
	c := pair(t, (&forge{id: id, signer: s, capture: &captured}).serve(t))
	if _, _, err := Client(context.Background(), c, "", &ClientConfig{Context: fixedCtx, VerifyEvidence: s.verifier()}); err != nil {
		t.Fatalf("genuine forge session failed: %v", err)
	}

	tests := []struct {
		name  string
		f     forge
		ctx   []byte
		check string
	}{
		{"tampered binding", forge{binding: bytes.Repeat([]byte{1}, 32)}, nil, CheckBinding},
		{"wrong context", forge{context: bytes.Repeat([]byte{9}, 32)}, nil, CheckContext},
		{"replayed authenticator, fresh context", forge{replay: captured}, nil, CheckContext},
		{"replayed authenticator, same context", forge{replay: captured}, fixedCtx, CheckSignature},
		{"unsigned Finished-only authenticator", forge{onlyFin: true}, nil, CheckAuthenticator},
		{"Finished MAC not from this session", forge{finished: bytes.Repeat([]byte{0}, 32)}, nil, CheckFinished},
		{"bad CertificateVerify signature", forge{badSig: true}, nil, CheckSignature},
		{"scheme not offered", forge{scheme: 0x0804}, nil, CheckSignatureScheme},
		{"evidence for another nonce", forge{nonce: bytes.Repeat([]byte{3}, 32)}, nil, CheckEvidenceNonce},
		{"authenticator leaf differs from TLS certificate", forge{tlsCert: &other}, nil, CheckLeaf},
		{"CMW on a non-leaf certificate", forge{cmwOnBoth: true}, nil, CheckExtensions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			f.id, f.signer = id, s
			c := pair(t, f.serve(t))
			_, _, err := Client(context.Background(), c, "", &ClientConfig{Context: tt.ctx, VerifyEvidence: s.verifier()})
			if got := FailedCheck(err); got != tt.check {
				t.Fatalf("err = %v (check %q), want check %q", err, got, tt.check)
			}
		})
	}

	t.Run("evidence signed by an untrusted key", func(t *testing.T) {
		c := pair(t, (&forge{id: id, signer: newTestSigner(t)}).serve(t))
		_, _, err := Client(context.Background(), c, "", &ClientConfig{VerifyEvidence: s.verifier()})
		if FailedCheck(err) != CheckEvidencePolicy {
			t.Fatalf("err = %v, want check %q", err, CheckEvidencePolicy)
		}
	})
	t.Run("no verifier configured", func(t *testing.T) {
		_, _, err := Client(context.Background(), nil, "", &ClientConfig{})
		if FailedCheck(err) != CheckEvidenceMissing {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestServerRejectsRequests(t *testing.T) {
	s := newTestSigner(t)
	id, _ := NewEphemeralIdentity()
	noCMW := NewRequest(make([]byte, 32))
	noCMW.Extensions = noCMW.Extensions[:1]
	rsaOnly := NewRequest(make([]byte, 32))
	rsaOnly.Extensions[0].Data = []byte{0, 2, 0x08, 0x04}
	tests := []struct {
		name  string
		frame func() (byte, []byte)
		check string
	}{
		{"no CMW offer", func() (byte, []byte) { b, _ := noCMW.Marshal(); return FrameRequest, b }, CheckRequest},
		{"no ECDSA P-256 scheme", func() (byte, []byte) { b, _ := rsaOnly.Marshal(); return FrameRequest, b }, CheckRequest},
		{"wrong frame type", func() (byte, []byte) { b, _ := NewRequest(nil).Marshal(); return FrameAuthenticator, b }, CheckFrame},
		{"garbage request", func() (byte, []byte) { return FrameRequest, []byte{17, 0, 0, 9, 1} }, CheckRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errc := make(chan error, 1)
			c := pair(t, func(raw net.Conn) {
				errc <- Serve(context.Background(), tls.Server(raw, ServerTLSConfig(id)), &ServerConfig{Identity: id, Evidence: s.evidence})
			})
			conn := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
			if err := conn.Handshake(); err != nil {
				t.Fatal(err)
			}
			typ, b := tt.frame()
			WriteFrame(conn, typ, b)
			if err := <-errc; FailedCheck(err) != tt.check {
				t.Fatalf("server err = %v, want check %q", err, tt.check)
			}
		})
	}
}

func TestFrameLimits(t *testing.T) {
	var buf bytes.Buffer
	buf.Write([]byte{1, 0xff, 0xff, 0xff, 0xff})
	if _, _, err := ReadFrame(&buf, 0); err == nil {
		t.Fatal("4 GiB frame accepted")
	}
	buf.Reset()
	buf.Write([]byte{0, 0, 0, 0, 0})
	if _, _, err := ReadFrame(&buf, 0); err == nil {
		t.Fatal("frame type 0 accepted")
	}
	buf.Reset()
	WriteFrame(&buf, 2, []byte("abc"))
	if typ, p, err := ReadFrame(&buf, 3); err != nil || typ != 2 || string(p) != "abc" {
		t.Fatalf("round trip: %d %q %v", typ, p, err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 3, 'a', 'b', 'c'})
	f.Add([]byte{0, 0, 0, 0, 0})
	f.Add([]byte{2, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, p, err := ReadFrame(bytes.NewReader(b), 1<<16)
		if err == nil && (typ == 0 || len(p) > 1<<16 || len(p) != len(b)-5 && len(b) < 5+len(p)) {
			t.Fatalf("accepted type %d with %d bytes", typ, len(p))
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	good, _ := NewRequest(bytes.Repeat([]byte{1}, 32)).Marshal()
	f.Add(good)
	f.Add([]byte{17, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		again, err := r.Marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("parse/marshal not canonical:\n in %x\nout %x", b, again)
		}
		r.SignatureSchemes()
	})
}

func FuzzParseAuthenticator(f *testing.F) {
	id, _ := NewEphemeralIdentity()
	ext, _ := cmwExtension([]byte(`{"version":1}`))
	cert, _ := marshalCertificate([]byte{1, 2}, []CertEntry{{DER: id.Certificate[0], Extensions: []Extension{ext}}})
	cv, _ := marshalCertificateVerify(schemeECDSAP256SHA256, []byte{1, 2, 3})
	fin, _ := appendHandshake(nil, typeFinished, make([]byte, 32))
	f.Add(append(append(cert, cv...), fin...))
	f.Add(fin)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAuthenticator(b)
		if err != nil {
			return
		}
		if len(a.Entries) == 0 {
			t.Fatal("authenticator without entries accepted")
		}
		cmwPayload(a.Entries[0])
		ParsePayload(b)
		EATNonces(b)
	})
}
