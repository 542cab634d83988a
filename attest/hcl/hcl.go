// Package hcl reads and writes the report Azure's paravisor (the HCL) puts
// in an Azure confidential VM's vTPM (NV index 0x01400001): the hardware
// report (an SEV-SNP report or a TDX TDREPORT) whose REPORT_DATA holds
// SHA-256 of the runtime claims, and those claims — JSON naming the vTPM's
// attestation key (HCLAkPub), the VM configuration and the user data.
//
// Layout (reference/cocos-pull-and-platforms.md §5.3), little-endian:
//
//	0x000  "HCLA", u32 version (2), u32 report size, u32 request type (2), …
//	0x020  hardware report: 0x4A0 bytes (SNP) or 0x400 (TDX TDREPORT, padded)
//	0x4C0  u32 data size, u32 version (1), u32 report type (2 SNP, 4 TDX),
//	       u32 hash type (1 = SHA-256), u32 claims size
//	0x4D4  runtime claims JSON
//
// hcl only parses and builds; it trusts nothing: attest/verify checks the
// hardware report with the SNP or TDX verifier and the claims' hash against
// it. It imports only the standard library; anyone may import it.
package hcl

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// NV indices and handles of Azure's vTPM.
const (
	ReportNVIndex   = 0x01400001 // the HCL report
	UserDataNVIndex = 0x01400002 // user data the HCL puts in the next report (TDX)
	AKHandle        = 0x81000003 // the attestation key the claims name
)

// Report types.
const (
	TypeSNP = 2
	TypeTDX = 4
)

// Offsets and sizes.
const (
	hwOffset       = 0x20
	SNPReportSize  = 0x4A0
	TDReportSize   = 0x400
	runtimeOffset  = 0x4C0
	runtimeHdrSize = 0x14
	// MaxClaims bounds the runtime claims read.
	MaxClaims = 1 << 16
)

var magic = []byte("HCLA")

// Report is a parsed HCL report.
type Report struct {
	Version     uint32
	RequestType uint32
	// Type is TypeSNP or TypeTDX (the runtime data header's report type).
	Type uint32
	// Hardware is the SNP report (0x4A0 bytes) or TDREPORT (0x400 bytes).
	Hardware []byte
	// ClaimsJSON are the runtime claims exactly as hashed.
	ClaimsJSON []byte
	Claims     RuntimeClaims
}

// RuntimeClaims are the parts of the runtime claims cvmd reads.
type RuntimeClaims struct {
	Keys            []JWK           `json:"keys"`
	VMConfiguration json.RawMessage `json:"vm-configuration,omitempty"`
	UserData        string          `json:"user-data,omitempty"`
}

// JWK is an RSA JSON Web Key of the claims (the vTPM's AK and EK).
type JWK struct {
	Kid    string   `json:"kid"`
	Kty    string   `json:"kty"`
	E      string   `json:"e"`
	N      string   `json:"n"`
	KeyOps []string `json:"key_ops,omitempty"`
}

// Parse decodes an HCL report read from ReportNVIndex.
func Parse(b []byte) (*Report, error) {
	if len(b) < runtimeOffset+runtimeHdrSize {
		return nil, fmt.Errorf("hcl: report is %d bytes, at least %d", len(b), runtimeOffset+runtimeHdrSize)
	}
	if !bytes.Equal(b[:4], magic) {
		return nil, fmt.Errorf("hcl: signature %q, want %q", b[:4], magic)
	}
	le := binary.LittleEndian
	r := &Report{Version: le.Uint32(b[4:]), RequestType: le.Uint32(b[12:])}
	rt := b[runtimeOffset:]
	dataSize, rtVersion, hashType, claimsSize := le.Uint32(rt), le.Uint32(rt[4:]), le.Uint32(rt[12:]), le.Uint32(rt[16:])
	r.Type = le.Uint32(rt[8:])
	if rtVersion != 1 {
		return nil, fmt.Errorf("hcl: runtime data version %d, want 1", rtVersion)
	}
	if hashType != 1 {
		return nil, fmt.Errorf("hcl: runtime claims hash type %d, want 1 (SHA-256)", hashType)
	}
	switch r.Type {
	case TypeSNP:
		r.Hardware = b[hwOffset : hwOffset+SNPReportSize]
	case TypeTDX:
		r.Hardware = b[hwOffset : hwOffset+TDReportSize]
	default:
		return nil, fmt.Errorf("hcl: report type %d, want %d (SEV-SNP) or %d (TDX)", r.Type, TypeSNP, TypeTDX)
	}
	if claimsSize > MaxClaims || uint64(claimsSize) > uint64(len(rt)-runtimeHdrSize) {
		return nil, fmt.Errorf("hcl: runtime claims of %d bytes do not fit the %d-byte report", claimsSize, len(b))
	}
	if uint64(dataSize) < uint64(runtimeHdrSize)+uint64(claimsSize) {
		return nil, fmt.Errorf("hcl: runtime data size %d smaller than its claims (%d)", dataSize, claimsSize)
	}
	// The claims may be NUL-terminated; the hash covers the JSON only.
	r.ClaimsJSON = bytes.TrimRight(rt[runtimeHdrSize:runtimeHdrSize+int(claimsSize)], "\x00")
	dec := json.NewDecoder(bytes.NewReader(r.ClaimsJSON))
	if err := dec.Decode(&r.Claims); err != nil {
		return nil, fmt.Errorf("hcl: runtime claims: %w", err)
	}
	if dec.More() {
		return nil, errors.New("hcl: runtime claims: trailing data")
	}
	return r, nil
}

// ClaimsHash is SHA-256 of the runtime claims: what the hardware report's
// REPORT_DATA[0:32] holds.
func (r *Report) ClaimsHash() [32]byte { return sha256.Sum256(r.ClaimsJSON) }

// ReportData returns REPORT_DATA of the hardware report (64 bytes).
func (r *Report) ReportData() []byte {
	if r.Type == TypeSNP {
		return r.Hardware[0x50:0x90]
	}
	return r.Hardware[0x80:0xC0] // REPORTMACSTRUCT.REPORTDATA
}

// AK returns the attestation key the claims name (kid HCLAkPub).
func (r *Report) AK() (*rsa.PublicKey, error) {
	for _, k := range r.Claims.Keys {
		if k.Kid == "HCLAkPub" {
			return k.RSA()
		}
	}
	return nil, errors.New("hcl: runtime claims have no HCLAkPub key")
}

// RSA decodes an RSA JWK.
func (k JWK) RSA() (*rsa.PublicKey, error) {
	if k.Kty != "RSA" {
		return nil, fmt.Errorf("hcl: key %s is %q, want RSA", k.Kid, k.Kty)
	}
	n, err1 := base64.RawURLEncoding.DecodeString(k.N)
	e, err2 := base64.RawURLEncoding.DecodeString(k.E)
	if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
		return nil, fmt.Errorf("hcl: key %s: bad modulus or exponent", k.Kid)
	}
	ev := 0
	for _, c := range e {
		ev = ev<<8 | int(c)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: ev}, nil
}

// RSAJWK encodes an RSA public key as the claims do.
func RSAJWK(kid string, k *rsa.PublicKey) JWK {
	e := big.NewInt(int64(k.E)).Bytes()
	return JWK{Kid: kid, Kty: "RSA", E: base64.RawURLEncoding.EncodeToString(e), N: base64.RawURLEncoding.EncodeToString(k.N.Bytes()), KeyOps: []string{"sign"}}
}

// Build lays out an HCL report (simulators and tests: the real one comes
// from Azure's paravisor). hardware must be sized for typ.
func Build(typ uint32, hardware, claimsJSON []byte) ([]byte, error) {
	want := map[uint32]int{TypeSNP: SNPReportSize, TypeTDX: TDReportSize}[typ]
	if want == 0 || len(hardware) != want {
		return nil, fmt.Errorf("hcl: %d-byte hardware report for type %d", len(hardware), typ)
	}
	b := make([]byte, runtimeOffset+runtimeHdrSize+len(claimsJSON))
	le := binary.LittleEndian
	copy(b, magic)
	le.PutUint32(b[4:], 2)
	le.PutUint32(b[8:], uint32(len(b)))
	le.PutUint32(b[12:], 2)
	copy(b[hwOffset:], hardware)
	rt := b[runtimeOffset:]
	le.PutUint32(rt, uint32(runtimeHdrSize+len(claimsJSON)))
	le.PutUint32(rt[4:], 1)
	le.PutUint32(rt[8:], typ)
	le.PutUint32(rt[12:], 1)
	le.PutUint32(rt[16:], uint32(len(claimsJSON)))
	copy(rt[runtimeHdrSize:], claimsJSON)
	return b, nil
}
