package pull

import (
	"errors"
	"fmt"
)

// Classes of fetch failures; every *Error wraps exactly one. The agent puts
// the class word in its events so a manager can branch without parsing.
var (
	// ErrUnreachable: the source could not be reached (DNS, connection,
	// TLS, the server going away) after every retry.
	ErrUnreachable = errors.New("unreachable")
	// ErrForbidden: the source or the egress refused access (HTTP 401/403,
	// S3 AccessDenied, an egress denial naming the rule).
	ErrForbidden = errors.New("access denied")
	// ErrNotFound: the source has no such object (HTTP 404, NoSuchKey,
	// an unknown image or tag).
	ErrNotFound = errors.New("not found")
	// ErrHashMismatch: the SHA3-256 of what was fetched (the plaintext of
	// an encrypted resource) differs from the manifest's.
	ErrHashMismatch = errors.New("hash mismatch")
	// ErrDecrypt: the ciphertext did not authenticate under the KBS key
	// (wrong key or altered file).
	ErrDecrypt = errors.New("decryption failed")
	// ErrKBS: the key broker refused or failed (attestation refused,
	// resource denied, malformed answer).
	ErrKBS = errors.New("key broker refused")
	// ErrInvalidSource: the manifest's source cannot be fetched as written
	// (unknown type, type and URL disagree, malformed URL, no credentials).
	ErrInvalidSource = errors.New("invalid source")
	// ErrTooLarge: the resource is larger than the agent accepts.
	ErrTooLarge = errors.New("too large")
)

// Error is a failed fetch of one resource.
type Error struct {
	Resource string // "algorithm", `dataset "iris.csv"`, `dataset 2`
	Source   string // the URL, as the manifest gave it
	Class    error  // one of the Err* classes above
	Err      error  // the cause; may be nil
}

func (e *Error) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("pull: %s from %s: %v", e.Resource, e.Source, e.Class)
	}
	return fmt.Sprintf("pull: %s from %s: %v: %v", e.Resource, e.Source, e.Class, e.Err)
}

// Unwrap lets errors.Is match the class and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Class}
	}
	return []error{e.Class, e.Err}
}

// ClassName is the class as one word, for event details.
func ClassName(err error) string {
	for _, c := range []struct {
		err  error
		name string
	}{
		{ErrUnreachable, "unreachable"}, {ErrForbidden, "forbidden"}, {ErrNotFound, "not_found"},
		{ErrHashMismatch, "hash_mismatch"}, {ErrDecrypt, "decrypt_failed"}, {ErrKBS, "kbs_refused"},
		{ErrInvalidSource, "invalid_source"}, {ErrTooLarge, "too_large"},
	} {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return "error"
}

// transient marks a cause worth retrying (with back-off): connection
// failures, server errors, throttling.
type transient struct{ err error }

func (t transient) Error() string { return t.err.Error() }
func (t transient) Unwrap() error { return t.err }

func isTransient(err error) bool {
	var t transient
	return errors.As(err, &t)
}

// classed is a cause with its class, before the resource is known.
type classed struct {
	class error
	err   error
}

func (c classed) Error() string {
	if c.err == nil {
		return c.class.Error()
	}
	return c.err.Error()
}
func (c classed) Unwrap() []error { return []error{c.class, c.err} }

func classErr(class error, format string, args ...any) error {
	return classed{class, fmt.Errorf(format, args...)}
}

// errStartOver: the source cannot continue from our offset (range not
// satisfiable, the object changed): drop the partial bytes and retry.
var errStartOver = transient{errors.New("the source cannot resume from here: starting over")}
