// Package atlstest gives tests of aTLS users (the ingress, the cvm CLI) an
// evidence source and a matching verifier without an attestation platform:
// an EAT in a COSE_Sign1 signed ES256 by a key made for the test, and a
// verifier that checks that signature and the nonce. Nothing else is
// checked, so it must never be used outside tests; the simulator-backed
// attestation child is the end-to-end path.
package atlstest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"

	"github.com/fxamacker/cbor/v2"

	"github.com/cvmd/cvmd/attest/strictcbor"

	"github.com/cvmd/cvmd/attest/atls"
)

// Signer signs test EATs.
type Signer struct{ key *ecdsa.PrivateKey }

// NewSigner returns a Signer with a fresh key.
func NewSigner() *Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return &Signer{key: k}
}

func sigStructure(protected, payload []byte) []byte {
	b, _ := cbor.Marshal([]any{"Signature1", protected, []byte{}, payload})
	return b
}

// Token returns a tagged COSE_Sign1 EAT whose eat_nonce is nonce.
func (s *Signer) Token(nonce []byte) []byte {
	protected, _ := cbor.Marshal(map[int]int{1: -7})
	payload, _ := cbor.Marshal(map[any]any{10: nonce, "platform_type": "test"})
	d := sha256.Sum256(sigStructure(protected, payload))
	r, ss, err := ecdsa.Sign(rand.Reader, s.key, d[:])
	if err != nil {
		panic(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	b, _ := cbor.Marshal(cbor.Tag{Number: 18, Content: []any{protected, map[any]any{}, payload, sig}})
	return b
}

// Evidence is an atls.EvidenceFunc.
func (s *Signer) Evidence(_ context.Context, _ [64]byte, nonce [32]byte) ([]byte, error) {
	return s.Token(nonce[:]), nil
}

// Verifier checks the token's signature with s's key and its nonce.
func (s *Signer) Verifier() atls.EvidenceVerifier {
	return func(_ context.Context, ev []byte, want atls.Expected) error {
		var tag cbor.Tag
		if err := strictcbor.Unmarshal(ev, &tag); err != nil {
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
			return errors.New("signature is not 64 bytes")
		}
		d := sha256.Sum256(sigStructure(protected, payload))
		if !ecdsa.Verify(&s.key.PublicKey, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			return errors.New("EAT signature does not verify with the test key")
		}
		n, err := atls.EATNonces(ev)
		if err != nil {
			return err
		}
		if !bytes.Equal(n[0], want.Nonce[:]) {
			return fmt.Errorf("eat_nonce %x, want %x", n[0], want.Nonce)
		}
		return nil
	}
}
