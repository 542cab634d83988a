package atls

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/cvmd/cvmd/attest/strictcbor"
)

// coseSign1Tag is the CBOR tag of a COSE_Sign1 structure (RFC 9052).
const coseSign1Tag = 18

// eatNonceKey is the CWT claim key of eat_nonce (RFC 9711).
const eatNonceKey = 10

// EATNonces returns the eat_nonce claim(s) of an EAT in a COSE_Sign1 (tagged
// or not). It reads the payload only: checking the signature and everything
// else is the evidence verifier's job. A claim holding one byte string yields
// one nonce; an array yields each.
func EATNonces(token []byte) ([][]byte, error) {
	var msg cbor.RawMessage = token
	var tag cbor.RawTag
	if err := strictcbor.Unmarshal(token, &tag); err == nil {
		if tag.Number != coseSign1Tag {
			return nil, fmt.Errorf("CBOR tag %d, want %d (COSE_Sign1)", tag.Number, coseSign1Tag)
		}
		msg = tag.Content
	}
	var sign1 []cbor.RawMessage
	if err := strictcbor.Unmarshal(msg, &sign1); err != nil {
		return nil, fmt.Errorf("evidence is not a COSE_Sign1: %v", err)
	}
	if len(sign1) != 4 {
		return nil, fmt.Errorf("COSE_Sign1 has %d elements, want 4", len(sign1))
	}
	var payload []byte
	if err := strictcbor.Unmarshal(sign1[2], &payload); err != nil || len(payload) == 0 {
		return nil, fmt.Errorf("COSE_Sign1 payload is not a byte string")
	}
	var claims map[any]cbor.RawMessage
	if err := strictcbor.Unmarshal(payload, &claims); err != nil {
		return nil, fmt.Errorf("EAT claims are not a CBOR map: %v", err)
	}
	var raw cbor.RawMessage
	for k, v := range claims {
		switch k := k.(type) {
		case uint64:
			if k == eatNonceKey {
				raw = v
			}
		case int64:
			if k == eatNonceKey {
				raw = v
			}
		}
	}
	if raw == nil {
		return nil, fmt.Errorf("EAT has no eat_nonce claim (key %d)", eatNonceKey)
	}
	var one []byte
	if err := strictcbor.Unmarshal(raw, &one); err == nil {
		return [][]byte{one}, nil
	}
	var many [][]byte
	if err := strictcbor.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		return nil, fmt.Errorf("eat_nonce is neither a byte string nor an array of them")
	}
	return many, nil
}
