// Package corim reads and writes CoRIM reference values (draft-ietf-rats-corim)
// as Cocos's CLI produces them and as cvmd's `cvm policy create-corim` does:
// an unsigned-corim-map (bare, or CBOR tag 501) holding CoMID tags (tag 506),
// optionally signed as a COSE_Sign1 (tag 18, go-cose) whose signature a
// caller checks against keys it trusts.
//
// Only the part of CoRIM that can constrain cvmd's evidence is supported:
// reference-value triples (environment class, measurement key, digests, SVN,
// raw value) and attest-key triples carrying key thumbprints, plus the
// CoRIM's validity period. Anything else that would constrain evidence
// (endorsements with conditions, dependent RIMs, raw-value masks, flags,
// integrity registers, …) is refused with an error naming it, never skipped:
// a policy must not silently lose a requirement. A CoRIM with no reference
// measurement at all — what Cocos's generator emits for SNP and TDX, since it
// drops every 48-byte digest — is refused too.
//
// What a reference value means for each platform's evidence is decided by
// attest/verify; this package only encodes, decodes and checks signatures.
// It imports fxamacker/cbor (through attest/strictcbor for decoding),
// go-cose and google/uuid; anyone may import it.
package corim

import (
	"crypto/sha1"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// CBOR tags of CoRIM and its parts.
const (
	TagUnsignedCoRIM = 501 // tagged-unsigned-corim-map
	TagCoMID         = 506 // tagged-concise-mid-tag (its content is a bstr holding the CoMID)
	TagCoSWID        = 505
	TagCoTL          = 508
	TagUUID          = 37
	TagOID           = 111
	TagBytes         = 560 // tagged-bytes
	TagUEID          = 550
	TagSVN           = 552 // exact svn
	TagMinSVN        = 553 // minimum svn
	TagThumbprint    = 557 // tagged-thumbprint-type (a digest of a key)
	TagEpochTime     = 1
	TagCOSESign1     = 18
)

// ContentType is the COSE content type of a signed CoRIM's payload.
const ContentType = "application/rim+cbor"

// Hash algorithm identifiers of the IANA Named Information registry, as
// CoRIM digests use them, with the digest size each implies.
const (
	AlgSHA256   = 1
	AlgSHA384   = 7
	AlgSHA512   = 8
	AlgSHA3_256 = 10
	AlgSHA3_384 = 11
	AlgSHA3_512 = 12
)

// DigestSize returns the size of a digest of algorithm alg, or 0 if cvmd does
// not support it.
func DigestSize(alg uint64) int {
	switch alg {
	case AlgSHA256, AlgSHA3_256:
		return 32
	case AlgSHA384, AlgSHA3_384:
		return 48
	case AlgSHA512, AlgSHA3_512:
		return 64
	}
	return 0
}

// AlgName names a supported algorithm ("sha-256", …).
func AlgName(alg uint64) string {
	switch alg {
	case AlgSHA256:
		return "sha-256"
	case AlgSHA384:
		return "sha-384"
	case AlgSHA512:
		return "sha-512"
	case AlgSHA3_256:
		return "sha3-256"
	case AlgSHA3_384:
		return "sha3-384"
	case AlgSHA3_512:
		return "sha3-512"
	}
	return fmt.Sprintf("alg %d", alg)
}

// CoRIM is a decoded CoRIM.
type CoRIM struct {
	ID string // corim-id: text, or a UUID in its string form
	// Profile is the profile's URI or dotted OID, "" if none.
	Profile string
	// NotBefore and NotAfter are the rim-validity; zero = unbounded.
	NotBefore, NotAfter time.Time
	Tags                []CoMID

	// Set by Load: whether a signature was checked, and the signer name
	// from the COSE corim-meta (may be empty).
	Signed bool
	Signer string
}

// CoMID is one concise-mid-tag.
type CoMID struct {
	TagID      string
	TagVersion uint64
	RefValues  []RefTriple
	AttestKeys []KeyTriple
}

// RefTriple is one reference-triple-record: the measurements one
// environment is expected to show. Each triple is one acceptable
// configuration: verify accepts evidence that matches some triple.
type RefTriple struct {
	Env          Environment
	Measurements []Measurement
}

// KeyTriple is one attest-key-triple-record: keys trusted to sign the
// environment's evidence, given as thumbprints.
type KeyTriple struct {
	Env         Environment
	Thumbprints []Digest
}

// Environment is an environment-map. cvmd's generator sets Vendor and Model
// (ModelSNP, ModelTDX, ModelVTPM, ModelCVMD); Cocos's sets only a random class
// id (and, for SNP, an instance UUID derived from the product name).
type Environment struct {
	ClassID      *TypedBytes // class-id: UUID (tag 37), OID (111) or bytes (560)
	Vendor       string
	Model        string
	Layer, Index *uint64
	Instance     *TypedBytes // instance-id: UEID (550), UUID (37) or bytes (560)
	Group        *TypedBytes // group-id: UUID (37) or bytes (560)
}

// Models cvmd's generator writes into class-map.model, naming which part of
// the evidence a triple is about.
const (
	VendorAMD   = "AMD"
	VendorIntel = "Intel"
	VendorTCG   = "TCG"
	VendorCVMD  = "cvmd"

	ModelSNP  = "SEV-SNP"
	ModelTDX  = "TDX"
	ModelVTPM = "vTPM"
	ModelCVMD = "cvmd"
)

// TypedBytes is a tagged byte string (a UUID, OID, UEID or plain bytes).
type TypedBytes struct {
	Tag   uint64
	Value []byte
}

// UUIDString returns the UUID form when Tag is TagUUID.
func (t *TypedBytes) String() string {
	if t == nil {
		return ""
	}
	if t.Tag == TagUUID && len(t.Value) == 16 {
		u, _ := uuid.FromBytes(t.Value)
		return u.String()
	}
	return fmt.Sprintf("%d(%x)", t.Tag, t.Value)
}

// ProductInstance is the instance UUID Cocos's generator sets for an SEV-SNP
// product (Milan, Genoa, …): UUIDv5 of the name in the OID namespace.
func ProductInstance(product string) *TypedBytes {
	u := uuid.NewHash(sha1.New(), uuid.NameSpaceOID, []byte(product), 5)
	return &TypedBytes{Tag: TagUUID, Value: u[:]}
}

// KeyKind says how a measurement is keyed.
type KeyKind int

// Measurement key kinds.
const (
	KeyNone KeyKind = iota // no mkey
	KeyUUID                // a UUID (Cocos: random, so it names nothing)
	KeyUint                // an unsigned integer (cvmd: a register or PCR number, see docs/attestation.md)
	KeyText                // a text string
)

// MKey is a measurement key ($measured-element-type-choice).
type MKey struct {
	Kind KeyKind
	UUID []byte
	Uint uint64
	Text string
}

// Labelled reports whether the key names a register (uint or text): Cocos's
// random UUIDs and an absent key name nothing.
func (k MKey) Labelled() bool { return k.Kind == KeyUint || k.Kind == KeyText }

func (k MKey) String() string {
	switch k.Kind {
	case KeyUUID:
		u, _ := uuid.FromBytes(k.UUID)
		return u.String()
	case KeyUint:
		return fmt.Sprint(k.Uint)
	case KeyText:
		return fmt.Sprintf("%q", k.Text)
	}
	return "none"
}

// Measurement is a measurement-map: what one element must show.
type Measurement struct {
	Key MKey
	// Digests are alternatives: the element's value must equal one of them.
	Digests []Digest
	// SVN, if set, is a security version the element must have (exact)
	// or reach (Min).
	SVN *SVN
	// RawValue, if set, is the exact value the element must have.
	RawValue []byte
}

// Digest is one [alg, value] entry.
type Digest struct {
	Alg   uint64
	Value []byte
}

// SVN is a tagged-svn (exact) or tagged-min-svn.
type SVN struct {
	Value uint64
	Min   bool
}

// Satisfied reports whether v meets s.
func (s *SVN) Satisfied(v uint64) bool {
	if s.Min {
		return v >= s.Value
	}
	return v == s.Value
}

func (s *SVN) String() string {
	if s.Min {
		return fmt.Sprintf("at least %d", s.Value)
	}
	return fmt.Sprintf("exactly %d", s.Value)
}

// Triples returns every reference triple of every tag.
func (c *CoRIM) Triples() []RefTriple {
	var out []RefTriple
	for _, t := range c.Tags {
		out = append(out, t.RefValues...)
	}
	return out
}

// KeyTriples returns every attest-key triple of every tag.
func (c *CoRIM) KeyTriples() []KeyTriple {
	var out []KeyTriple
	for _, t := range c.Tags {
		out = append(out, t.AttestKeys...)
	}
	return out
}

// Valid reports an error unless now is within the CoRIM's validity.
func (c *CoRIM) Valid(now time.Time) error {
	if !c.NotBefore.IsZero() && now.Before(c.NotBefore) {
		return &Error{Check: "corim.validity", Err: fmt.Errorf("not valid before %s (now %s)", c.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
	}
	if !c.NotAfter.IsZero() && now.After(c.NotAfter) {
		return &Error{Check: "corim.validity", Err: fmt.Errorf("expired at %s (now %s)", c.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
	}
	return nil
}

// Error is a refused CoRIM: Check names what failed (corim.decode,
// corim.empty, corim.unsupported, corim.unsigned, corim.signature,
// corim.validity).
type Error struct {
	Check string
	Err   error
}

func (e *Error) Error() string { return "corim: " + e.Check + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

func errf(check, format string, a ...any) *Error {
	return &Error{Check: check, Err: fmt.Errorf(format, a...)}
}
