package atls

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Frame types inside the TLS stream (§5.6 of the Cocos reference).
const (
	FrameRequest       = 1 // client → server: authenticator request
	FrameAuthenticator = 2 // server → client: exported authenticator
)

// MaxFrame is the largest frame payload the protocol allows.
const MaxFrame = 16 << 20

// maxRequestFrame bounds what a server reads from an unauthenticated client:
// a request is a few dozen bytes.
const maxRequestFrame = 64 << 10

// TLS handshake message types used by exported authenticators.
const (
	typeCertificate              = 11
	typeCertificateRequest       = 13
	typeCertificateVerify        = 15
	typeClientCertificateRequest = 17
	typeFinished                 = 20
)

// Extension types.
const (
	extSignatureAlgorithms = 0x000d
	extCMWAttestation      = 0xFF00
)

// schemeECDSAP256SHA256 is the only signature scheme offered and accepted.
const schemeECDSAP256SHA256 = 0x0403

// WriteFrame writes one frame: type ‖ uint32 big-endian length ‖ payload, in
// a single Write so that a frame is one TLS record when it fits.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if typ == 0 {
		return fmt.Errorf("atls: frame type 0 is invalid")
	}
	if len(payload) > MaxFrame {
		return fmt.Errorf("atls: frame of %d bytes exceeds %d", len(payload), MaxFrame)
	}
	b := make([]byte, 5+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:5], uint32(len(payload)))
	copy(b[5:], payload)
	_, err := w.Write(b)
	return err
}

// ReadFrame reads one frame whose payload is at most max bytes (max ≤ 0 or
// above MaxFrame means MaxFrame). The length is checked before anything is
// allocated.
func ReadFrame(r io.Reader, max int) (typ byte, payload []byte, err error) {
	if max <= 0 || max > MaxFrame {
		max = MaxFrame
	}
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("atls: reading frame header: %w", err)
	}
	if h[0] == 0 {
		return 0, nil, fmt.Errorf("atls: frame type 0 is invalid")
	}
	n := binary.BigEndian.Uint32(h[1:5])
	if uint64(n) > uint64(max) {
		return 0, nil, fmt.Errorf("atls: frame of %d bytes exceeds %d", n, max)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("atls: reading frame payload: %w", err)
	}
	return h[0], payload, nil
}

// Extension is one TLS extension: uint16 type ‖ uint16 length ‖ data.
type Extension struct {
	Type uint16
	Data []byte
}

func appendU16(b []byte, v int) []byte { return append(b, byte(v>>8), byte(v)) }
func appendU24(b []byte, v int) []byte { return append(b, byte(v>>16), byte(v>>8), byte(v)) }
func u16(b []byte) int                 { return int(b[0])<<8 | int(b[1]) }
func u24(b []byte) int                 { return int(b[0])<<16 | int(b[1])<<8 | int(b[2]) }

// appendHandshake appends type ‖ uint24 length ‖ body.
func appendHandshake(dst []byte, typ byte, body []byte) ([]byte, error) {
	if len(body) > 0xFFFFFF {
		return nil, fmt.Errorf("atls: handshake message of %d bytes", len(body))
	}
	dst = append(dst, typ)
	dst = appendU24(dst, len(body))
	return append(dst, body...), nil
}

// parseHandshake splits one handshake message off b. raw is the whole
// message including its header (what transcripts hash).
func parseHandshake(b []byte) (typ byte, body, raw, rest []byte, err error) {
	if len(b) < 4 {
		return 0, nil, nil, nil, fmt.Errorf("handshake header: %w", ErrTruncated)
	}
	n := u24(b[1:4])
	if len(b)-4 < n {
		return 0, nil, nil, nil, fmt.Errorf("handshake message type %d of %d bytes: %w", b[0], n, ErrTruncated)
	}
	return b[0], b[4 : 4+n], b[:4+n], b[4+n:], nil
}

// appendExtensions appends uint16 total ‖ extensions.
func appendExtensions(dst []byte, exts []Extension) ([]byte, error) {
	total := 0
	for _, e := range exts {
		if len(e.Data) > 0xFFFF {
			return nil, fmt.Errorf("atls: extension 0x%04x of %d bytes", e.Type, len(e.Data))
		}
		total += 4 + len(e.Data)
	}
	if total > 0xFFFF {
		return nil, fmt.Errorf("atls: extensions of %d bytes exceed 65535", total)
	}
	dst = appendU16(dst, total)
	for _, e := range exts {
		dst = appendU16(dst, int(e.Type))
		dst = appendU16(dst, len(e.Data))
		dst = append(dst, e.Data...)
	}
	return dst, nil
}

// parseExtensions reads uint16 total ‖ extensions off b, refusing duplicates.
func parseExtensions(b []byte) (exts []Extension, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("extensions length: %w", ErrTruncated)
	}
	total := u16(b)
	if len(b)-2 < total {
		return nil, nil, fmt.Errorf("extensions of %d bytes: %w", total, ErrTruncated)
	}
	p, rest := b[2:2+total], b[2+total:]
	seen := map[uint16]bool{}
	for len(p) > 0 {
		if len(p) < 4 {
			return nil, nil, fmt.Errorf("extension header: %w", ErrTruncated)
		}
		typ, n := uint16(u16(p)), u16(p[2:])
		if len(p)-4 < n {
			return nil, nil, fmt.Errorf("extension 0x%04x of %d bytes: %w", typ, n, ErrTruncated)
		}
		if seen[typ] {
			return nil, nil, fmt.Errorf("extension 0x%04x repeated", typ)
		}
		seen[typ] = true
		exts = append(exts, Extension{Type: typ, Data: p[4 : 4+n]})
		p = p[4+n:]
	}
	return exts, rest, nil
}

func findExtension(exts []Extension, typ uint16) (Extension, bool) {
	for _, e := range exts {
		if e.Type == typ {
			return e, true
		}
	}
	return Extension{}, false
}

// Request is an authenticator request: a ClientCertificateRequest (17) or,
// accepted from others, a CertificateRequest (13).
type Request struct {
	Type       byte
	Context    []byte
	Extensions []Extension
}

// NewRequest returns the request Cocos's client sends: type 17, the given
// context, signature_algorithms = [ecdsa_secp256r1_sha256] and the CMW
// attestation offer (0xFF00, empty).
func NewRequest(context []byte) *Request {
	return &Request{
		Type:    typeClientCertificateRequest,
		Context: context,
		Extensions: []Extension{
			{Type: extSignatureAlgorithms, Data: []byte{0x00, 0x02, schemeECDSAP256SHA256 >> 8, schemeECDSAP256SHA256 & 0xff}},
			{Type: extCMWAttestation},
		},
	}
}

// Marshal encodes the request as one handshake message.
func (r *Request) Marshal() ([]byte, error) {
	if len(r.Context) > 255 {
		return nil, fmt.Errorf("atls: request context of %d bytes exceeds 255", len(r.Context))
	}
	body := append([]byte{byte(len(r.Context))}, r.Context...)
	body, err := appendExtensions(body, r.Extensions)
	if err != nil {
		return nil, err
	}
	return appendHandshake(nil, r.Type, body)
}

// ParseRequest decodes exactly one request message.
func ParseRequest(b []byte) (*Request, error) {
	typ, body, _, rest, err := parseHandshake(b)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after the request", len(rest))
	}
	if typ != typeClientCertificateRequest && typ != typeCertificateRequest {
		return nil, fmt.Errorf("handshake type %d, want 17 or 13", typ)
	}
	if len(body) < 1 || len(body)-1 < int(body[0]) {
		return nil, fmt.Errorf("request context: %w", ErrTruncated)
	}
	ctx := body[1 : 1+int(body[0])]
	exts, rest, err := parseExtensions(body[1+len(ctx):])
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after the request extensions", len(rest))
	}
	return &Request{Type: typ, Context: ctx, Extensions: exts}, nil
}

// SignatureSchemes returns the offered signature_algorithms.
func (r *Request) SignatureSchemes() ([]uint16, error) {
	e, ok := findExtension(r.Extensions, extSignatureAlgorithms)
	if !ok {
		return nil, fmt.Errorf("no signature_algorithms extension")
	}
	if len(e.Data) < 2 {
		return nil, fmt.Errorf("signature_algorithms: %w", ErrTruncated)
	}
	n := u16(e.Data)
	if n < 2 || n%2 != 0 || len(e.Data) != 2+n {
		return nil, fmt.Errorf("signature_algorithms of %d bytes is malformed", len(e.Data))
	}
	var out []uint16
	for p := e.Data[2:]; len(p) > 0; p = p[2:] {
		out = append(out, uint16(u16(p)))
	}
	return out, nil
}

// offersCMW reports whether the request offers the CMW attestation extension.
func (r *Request) offersCMW() bool {
	_, ok := findExtension(r.Extensions, extCMWAttestation)
	return ok
}

// CertEntry is one entry of a Certificate message.
type CertEntry struct {
	DER        []byte
	Extensions []Extension
}

// Authenticator is a parsed exported authenticator. The raw fields keep the
// bytes as received, which is what the transcript hashes cover.
type Authenticator struct {
	Context    []byte
	Entries    []CertEntry
	Scheme     uint16
	Signature  []byte
	VerifyData []byte

	rawCertificate, rawCertificateVerify []byte
}

func marshalCertificate(ctx []byte, entries []CertEntry) ([]byte, error) {
	if len(ctx) > 255 {
		return nil, fmt.Errorf("atls: context of %d bytes exceeds 255", len(ctx))
	}
	var list []byte
	for _, e := range entries {
		if len(e.DER) == 0 || len(e.DER) > 0xFFFFFF {
			return nil, fmt.Errorf("atls: certificate of %d bytes", len(e.DER))
		}
		list = appendU24(list, len(e.DER))
		list = append(list, e.DER...)
		var err error
		if list, err = appendExtensions(list, e.Extensions); err != nil {
			return nil, err
		}
	}
	if len(list) > 0xFFFFFF {
		return nil, fmt.Errorf("atls: certificate list of %d bytes", len(list))
	}
	body := append([]byte{byte(len(ctx))}, ctx...)
	body = appendU24(body, len(list))
	body = append(body, list...)
	return appendHandshake(nil, typeCertificate, body)
}

func marshalCertificateVerify(scheme uint16, sig []byte) ([]byte, error) {
	if len(sig) > 0xFFFF {
		return nil, fmt.Errorf("atls: signature of %d bytes", len(sig))
	}
	body := appendU16(nil, int(scheme))
	body = appendU16(body, len(sig))
	return appendHandshake(nil, typeCertificateVerify, append(body, sig...))
}

// ErrEmptyAuthenticator is returned for a Finished-only authenticator: the
// server refused to authenticate, which this client never accepts.
var ErrEmptyAuthenticator = fmt.Errorf("empty authenticator (Finished only, no certificate)")

// ParseAuthenticator decodes Certificate ‖ CertificateVerify ‖ Finished.
func ParseAuthenticator(b []byte) (*Authenticator, error) {
	typ, body, rawCert, rest, err := parseHandshake(b)
	if err != nil {
		return nil, err
	}
	if typ == typeFinished {
		return nil, ErrEmptyAuthenticator
	}
	if typ != typeCertificate {
		return nil, fmt.Errorf("first message has handshake type %d, want Certificate (11)", typ)
	}
	a := &Authenticator{rawCertificate: rawCert}
	if len(body) < 1 || len(body)-1 < int(body[0])+3 {
		return nil, fmt.Errorf("certificate context: %w", ErrTruncated)
	}
	a.Context = body[1 : 1+int(body[0])]
	p := body[1+len(a.Context):]
	n := u24(p)
	if len(p)-3 != n {
		return nil, fmt.Errorf("certificate list of %d bytes in %d", n, len(p)-3)
	}
	for p = p[3:]; len(p) > 0; {
		if len(p) < 3 {
			return nil, fmt.Errorf("certificate entry: %w", ErrTruncated)
		}
		m := u24(p)
		if m == 0 || len(p)-3 < m {
			return nil, fmt.Errorf("certificate entry of %d bytes: %w", m, ErrTruncated)
		}
		der := p[3 : 3+m]
		exts, r, err := parseExtensions(p[3+m:])
		if err != nil {
			return nil, fmt.Errorf("certificate entry %d: %w", len(a.Entries), err)
		}
		a.Entries = append(a.Entries, CertEntry{DER: der, Extensions: exts})
		p = r
	}
	if len(a.Entries) == 0 {
		return nil, fmt.Errorf("certificate message has no entries")
	}

	typ, body, rawCV, rest, err := parseHandshake(rest)
	if err != nil {
		return nil, err
	}
	if typ != typeCertificateVerify {
		return nil, fmt.Errorf("second message has handshake type %d, want CertificateVerify (15)", typ)
	}
	if len(body) < 4 || len(body) != 4+u16(body[2:]) {
		return nil, fmt.Errorf("certificate verify of %d bytes is malformed", len(body))
	}
	a.Scheme, a.Signature, a.rawCertificateVerify = uint16(u16(body)), body[4:], rawCV

	typ, body, _, rest, err = parseHandshake(rest)
	if err != nil {
		return nil, err
	}
	if typ != typeFinished {
		return nil, fmt.Errorf("third message has handshake type %d, want Finished (20)", typ)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after Finished", len(rest))
	}
	a.VerifyData = body
	return a, nil
}

// cmwPayload extracts the CMW payload of a leaf entry: data = uint16 len ‖ payload.
func cmwPayload(e CertEntry) ([]byte, bool, error) {
	ext, ok := findExtension(e.Extensions, extCMWAttestation)
	if !ok {
		return nil, false, nil
	}
	if len(ext.Data) < 2 || u16(ext.Data) == 0 || u16(ext.Data) != len(ext.Data)-2 {
		return nil, true, fmt.Errorf("CMW extension of %d bytes is malformed", len(ext.Data))
	}
	return ext.Data[2:], true, nil
}

func cmwExtension(payload []byte) (Extension, error) {
	if len(payload) == 0 || len(payload)+2 > 0xFFFF-4 {
		return Extension{}, fmt.Errorf("atls: CMW payload of %d bytes does not fit an extension", len(payload))
	}
	return Extension{Type: extCMWAttestation, Data: append(appendU16(nil, len(payload)), payload...)}, nil
}
