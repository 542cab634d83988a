package attest

import "errors"

// Errors callers branch on.
var (
	// ErrUnsupportedPlatform: the request names a platform this VM cannot
	// attest (no TPM for vTPM, no SNP for SNP).
	ErrUnsupportedPlatform = errors.New("attest: platform not available on this VM")
	// ErrUnimplemented: a part of a platform cvmd does not implement here
	// (Azure TDX quotes, which come from a host service the child cannot reach).
	ErrUnimplemented = errors.New("attest: platform not implemented")
	// ErrBadRequest: a nonce is too long or the platform number is unknown.
	ErrBadRequest = errors.New("attest: bad request")
)
