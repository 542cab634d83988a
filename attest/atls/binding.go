package atls

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
)

// Exporter labels (RFC 9261 §4 and Cocos's binder).
const (
	labelServerHandshakeContext = "EXPORTER-server authenticator handshake context"
	labelServerFinishedKey      = "EXPORTER-server authenticator finished key"
	ExporterLabel               = "Attestation"
	exportedLen                 = 32
	mediaTypeEAT                = "application/eat+cwt"
)

// suiteHash is the authenticator hash for a TLS 1.3 cipher suite.
func suiteHash(st *tls.ConnectionState) (crypto.Hash, error) {
	if st.Version != tls.VersionTLS13 {
		return 0, fmt.Errorf("TLS version 0x%04x, want TLS 1.3", st.Version)
	}
	switch st.CipherSuite {
	case tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256:
		return crypto.SHA256, nil
	case tls.TLS_AES_256_GCM_SHA384:
		return crypto.SHA384, nil
	}
	return 0, fmt.Errorf("cipher suite %s has no authenticator hash", tls.CipherSuiteName(st.CipherSuite))
}

// sessionKeys are the per-connection values the authenticator is built from.
type sessionKeys struct {
	h           crypto.Hash
	hsContext   []byte
	finishedKey []byte
}

func exportSessionKeys(st *tls.ConnectionState) (*sessionKeys, error) {
	h, err := suiteHash(st)
	if err != nil {
		return nil, err
	}
	hc, err := st.ExportKeyingMaterial(labelServerHandshakeContext, nil, h.Size())
	if err != nil {
		return nil, fmt.Errorf("exporting handshake context: %w", err)
	}
	fk, err := st.ExportKeyingMaterial(labelServerFinishedKey, nil, h.Size())
	if err != nil {
		return nil, fmt.Errorf("exporting finished key: %w", err)
	}
	return &sessionKeys{h: h, hsContext: hc, finishedKey: fk}, nil
}

// transcript returns H(hsContext ‖ parts...).
func (k *sessionKeys) transcript(parts ...[]byte) []byte {
	hh := k.h.New()
	hh.Write(k.hsContext)
	for _, p := range parts {
		hh.Write(p)
	}
	return hh.Sum(nil)
}

// finished returns HMAC-H(finished key, transcript).
func (k *sessionKeys) finished(transcript []byte) []byte {
	m := hmac.New(k.h.New, k.finishedKey)
	m.Write(transcript)
	return m.Sum(nil)
}

// signedContent is what CertificateVerify signs (RFC 8446 §4.4.3 with the
// context string of RFC 9261).
func signedContent(transcript []byte) []byte {
	b := bytes.Repeat([]byte{0x20}, 64)
	b = append(b, "Exported Authenticator"...)
	b = append(b, 0)
	return append(b, transcript...)
}

// Binding is what ties evidence to one TLS session and one leaf key.
type Binding struct {
	Exported   []byte   // exporter("Attestation", request context, 32)
	AIKPubHash []byte   // H(leaf SPKI DER)
	Binding    []byte   // H(leaf SPKI DER ‖ Exported)
	ReportData [64]byte // SHA-512(Binding): the SNP/TDX report data requested
	Nonce      [32]byte // SHA-256(Exported): the vTPM nonce requested
}

// ComputeBinding derives the binding for a session, request context and leaf
// SubjectPublicKeyInfo (DER).
func ComputeBinding(st *tls.ConnectionState, context, spki []byte) (*Binding, error) {
	h, err := suiteHash(st)
	if err != nil {
		return nil, err
	}
	exp, err := st.ExportKeyingMaterial(ExporterLabel, context, exportedLen)
	if err != nil {
		return nil, fmt.Errorf("exporting %q: %w", ExporterLabel, err)
	}
	b := &Binding{Exported: exp}
	hh := h.New()
	hh.Write(spki)
	b.AIKPubHash = hh.Sum(nil)
	hh.Write(exp)
	b.Binding = hh.Sum(nil)
	b.ReportData = sha512.Sum512(b.Binding)
	b.Nonce = sha256.Sum256(exp)
	return b, nil
}

// Payload is the CMW attestation payload carried in extension 0xFF00 of the
// leaf entry (JSON; byte fields are standard base64, as encoding/json does).
type Payload struct {
	Version            int    `json:"version"`
	MediaType          string `json:"media_type,omitempty"`
	Evidence           []byte `json:"evidence,omitempty"`
	AttestationResults []byte `json:"attestation_results,omitempty"`
	Binder             Binder `json:"binder"`
}

// Binder is the payload's binding material.
type Binder struct {
	ExporterLabel string `json:"exporter_label,omitempty"`
	AIKPubHash    []byte `json:"aik_pub_hash,omitempty"`
	Binding       []byte `json:"binding,omitempty"`
}

// ParsePayload decodes a CMW payload strictly: unknown fields, trailing data,
// another version, media type or exporter label, and missing evidence or
// binder are refused.
func ParsePayload(b []byte) (*Payload, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p Payload
	if err := d.Decode(&p); err != nil {
		return nil, fmt.Errorf("decoding CMW JSON: %w", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the CMW JSON object")
	}
	if p.Version != 1 {
		return nil, fmt.Errorf("version %d, want 1", p.Version)
	}
	if p.MediaType != "" && p.MediaType != mediaTypeEAT {
		return nil, fmt.Errorf("media_type %q, want %q", p.MediaType, mediaTypeEAT)
	}
	if len(p.Evidence) == 0 {
		return nil, fmt.Errorf("no evidence")
	}
	if p.Binder.ExporterLabel != "" && p.Binder.ExporterLabel != ExporterLabel {
		return nil, fmt.Errorf("exporter_label %q, want %q", p.Binder.ExporterLabel, ExporterLabel)
	}
	if len(p.Binder.AIKPubHash) == 0 || len(p.Binder.Binding) == 0 {
		return nil, fmt.Errorf("binder without aik_pub_hash or binding")
	}
	return &p, nil
}
