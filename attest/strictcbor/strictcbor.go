// Package strictcbor is the one CBOR decoder configuration cvmd uses for
// bytes it did not write itself: EAT tokens and their COSE envelopes, the
// measurement log carried in a token, CoRIM reference values, the attestation
// child's log file. One configuration, so a reviewer checks the limits once
// and no decoder beside it is looser.
//
// The limits bound what hostile input can make the decoder allocate or
// recurse into, and refuse the encodings that let two parsers read one
// message differently: duplicate map keys, indefinite lengths, invalid UTF-8.
// Unknown map keys are accepted by the decoder; callers that must refuse
// them (a policy must not carry a constraint we would ignore) check for them
// themselves.
//
// strictcbor imports only fxamacker/cbor; anyone may import it.
package strictcbor

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Limits of the decoder.
const (
	// MaxNestedLevels bounds nesting of arrays, maps and tags. A CoRIM
	// reference value is about 12 deep; tokens and logs are shallower.
	MaxNestedLevels = 24
	// MaxArrayElements bounds one array (an event log holds at most 4096
	// events; PCR quotes and CoRIM measurement lists are far smaller).
	MaxArrayElements = 1 << 16
	// MaxMapPairs bounds one map.
	MaxMapPairs = 1 << 12
)

// Options is the configuration; exported so a test can show it is the only one.
var Options = cbor.DecOptions{
	MaxNestedLevels:  MaxNestedLevels,
	MaxArrayElements: MaxArrayElements,
	MaxMapPairs:      MaxMapPairs,
	DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	IndefLength:      cbor.IndefLengthForbidden,
	UTF8:             cbor.UTF8RejectInvalid,
	TagsMd:           cbor.TagsAllowed,
	// Integers that do not fit the Go type are an error, not a wrap.
	IntDec: cbor.IntDecConvertSignedOrFail,
}

var decMode, modeErr = Options.DecMode()

// ErrConfig is returned by every function when Options is not a valid
// configuration (a programming error the package test catches).
var ErrConfig = errors.New("strictcbor: invalid decoder configuration")

// DecMode returns the decoder, or an error if Options is invalid.
func DecMode() (cbor.DecMode, error) {
	if modeErr != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, modeErr)
	}
	return decMode, nil
}

// Unmarshal decodes exactly one CBOR data item (no trailing bytes) into v.
func Unmarshal(data []byte, v any) error {
	dm, err := DecMode()
	if err != nil {
		return err
	}
	return dm.Unmarshal(data, v)
}

// UnmarshalFirst decodes the first CBOR data item of data into v and returns
// the bytes after it.
func UnmarshalFirst(data []byte, v any) (rest []byte, err error) {
	dm, err := DecMode()
	if err != nil {
		return nil, err
	}
	return dm.UnmarshalFirst(data, v)
}

// Wellformed reports an error unless data is exactly one well-formed CBOR
// data item within the limits.
func Wellformed(data []byte) error {
	dm, err := DecMode()
	if err != nil {
		return err
	}
	return dm.Wellformed(data)
}
