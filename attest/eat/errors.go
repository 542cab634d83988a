package eat

import "errors"

// ErrBadSignature is returned by Sign1.Verify when the signature does not
// verify with the given key.
var ErrBadSignature = errors.New("eat: COSE signature does not verify")
