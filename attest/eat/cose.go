package eat

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"

	"github.com/fxamacker/cbor/v2"

	"github.com/cvmd/cvmd/attest/strictcbor"
)

// COSE constants (RFC 9052, RFC 9053).
const (
	coseSign1Tag  = 18
	headerAlg     = 1
	headerKid     = 4
	algES256      = -7
	es256SigBytes = 64
)

// Signer signs the COSE ToBeSigned bytes with ES256 and returns the raw
// signature r ‖ s (32 bytes each). It gets the whole message, not a digest,
// because a TPM restricted key must hash the data itself.
type Signer func(toBeSigned []byte) ([]byte, error)

// KeySigner returns a Signer that signs with a P-256 private key.
func KeySigner(key *ecdsa.PrivateKey) Signer {
	return func(tbs []byte) ([]byte, error) {
		d := sha256.Sum256(tbs)
		r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
		if err != nil {
			return nil, fmt.Errorf("eat: signing: %w", err)
		}
		return RawSignature(r, s), nil
	}
}

// RawSignature encodes an ECDSA P-256 signature as COSE wants it: r ‖ s, each
// left-padded to 32 bytes.
func RawSignature(r, s *big.Int) []byte {
	out := make([]byte, es256SigBytes)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// Sign1 is a decoded COSE_Sign1 message. Protected is kept as the exact bytes
// that were signed.
type Sign1 struct {
	Protected []byte // serialized protected header map
	Alg       int64  // from the protected header
	// Kid is protected header 4 (the issuer), covered by the signature.
	Kid []byte
	// UnprotectedKid is unprotected header 4, which anyone can change without
	// breaking the signature (Cocos puts its kid there): a verifier refuses
	// a token that has one.
	UnprotectedKid []byte
	Payload        []byte
	Signature      []byte
}

type sign1Wire struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int64]any
	Payload     []byte
	Signature   []byte
}

// encMode is core deterministic encoding: a verifier can re-encode and get
// the same bytes. Its options are constants, so an error is a programming
// error that the first Encode reports.
var encMode, encModeErr = cbor.CoreDetEncOptions().EncMode()

// marshal encodes v with encMode.
func marshal(v any) ([]byte, error) {
	if encModeErr != nil {
		return nil, fmt.Errorf("eat: CBOR encoder: %w", encModeErr)
	}
	return encMode.Marshal(v)
}

// toBeSigned builds Sig_structure = ["Signature1", protected, h”, payload].
func toBeSigned(protected, payload []byte) ([]byte, error) {
	return marshal([]any{"Signature1", protected, []byte{}, payload})
}

// SignSign1 wraps payload in a tagged COSE_Sign1 signed by sign with ES256.
// kid, if any, goes into the protected header, so it is signed too.
func SignSign1(payload, kid []byte, sign Signer) ([]byte, error) {
	ph := map[int64]any{headerAlg: algES256}
	if len(kid) > 0 {
		ph[headerKid] = kid
	}
	protected, err := marshal(ph)
	if err != nil {
		return nil, err
	}
	tbs, err := toBeSigned(protected, payload)
	if err != nil {
		return nil, err
	}
	sig, err := sign(tbs)
	if err != nil {
		return nil, err
	}
	if len(sig) != es256SigBytes {
		return nil, fmt.Errorf("eat: signer returned %d bytes, want %d", len(sig), es256SigBytes)
	}
	return marshal(cbor.Tag{Number: coseSign1Tag, Content: sign1Wire{
		Protected: protected, Unprotected: map[int64]any{}, Payload: payload, Signature: sig,
	}})
}

// ParseSign1 decodes a tagged or untagged COSE_Sign1 without verifying it.
func ParseSign1(b []byte) (*Sign1, error) {
	var raw cbor.RawTag
	body := b
	if err := strictcbor.Unmarshal(b, &raw); err == nil {
		if raw.Number != coseSign1Tag {
			return nil, fmt.Errorf("eat: CBOR tag %d, want %d (COSE_Sign1)", raw.Number, coseSign1Tag)
		}
		body = raw.Content
	}
	var w sign1Wire
	if err := strictcbor.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("eat: decoding COSE_Sign1: %w", err)
	}
	var ph map[int64]any
	if len(w.Protected) > 0 {
		if err := strictcbor.Unmarshal(w.Protected, &ph); err != nil {
			return nil, fmt.Errorf("eat: decoding protected header: %w", err)
		}
	}
	alg, ok := ph[headerAlg].(int64)
	if !ok {
		if u, uok := ph[headerAlg].(uint64); uok && u < 1<<62 {
			alg, ok = int64(u), true
		}
	}
	if !ok {
		return nil, errors.New("eat: protected header has no integer alg")
	}
	m := &Sign1{Protected: w.Protected, Alg: alg, Payload: w.Payload, Signature: w.Signature}
	if v, ok := ph[headerKid]; ok {
		kid, ok := v.([]byte)
		if !ok {
			return nil, errors.New("eat: protected kid is not a byte string")
		}
		m.Kid = kid
	}
	if v, ok := w.Unprotected[headerKid]; ok {
		kid, _ := v.([]byte)
		m.UnprotectedKid = append([]byte{}, kid...)
	}
	if w.Payload == nil {
		return nil, errors.New("eat: COSE_Sign1 has a detached or nil payload")
	}
	return m, nil
}

// Verify checks the ES256 signature of m with pub.
func (m *Sign1) Verify(pub *ecdsa.PublicKey) error {
	if m.Alg != algES256 {
		return fmt.Errorf("eat: alg %d, want ES256 (%d)", m.Alg, algES256)
	}
	if pub == nil || pub.Curve != elliptic.P256() {
		return errors.New("eat: verification key is not P-256")
	}
	if len(m.Signature) != es256SigBytes {
		return fmt.Errorf("eat: signature is %d bytes, want %d", len(m.Signature), es256SigBytes)
	}
	tbs, err := toBeSigned(m.Protected, m.Payload)
	if err != nil {
		return err
	}
	d := sha256.Sum256(tbs)
	r := new(big.Int).SetBytes(m.Signature[:32])
	s := new(big.Int).SetBytes(m.Signature[32:])
	if !ecdsa.Verify(pub, d[:], r, s) {
		return ErrBadSignature
	}
	return nil
}
