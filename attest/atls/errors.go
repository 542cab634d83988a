package atls

import (
	"errors"
	"fmt"
)

// Checks named in a CheckError, in the order the client performs them.
const (
	CheckTLS             = "tls_handshake"       // TLS 1.3 handshake, version, cipher suite
	CheckFrame           = "frame"               // framing of the request/authenticator
	CheckRequest         = "request"             // authenticator request structure (server side)
	CheckAuthenticator   = "authenticator"       // authenticator structure, empty authenticators
	CheckContext         = "context"             // certificate_request_context equals the request's
	CheckExtensions      = "extensions"          // CMW only on the leaf, only if offered
	CheckSignatureScheme = "signature_scheme"    // CertificateVerify scheme was offered
	CheckSignature       = "certificate_verify"  // CertificateVerify signature by the leaf key
	CheckFinished        = "finished"            // Finished MAC with the exported finished key
	CheckLeaf            = "leaf"                // leaf parses, is the TLS server certificate, chain
	CheckPayload         = "payload"             // CMW JSON payload structure
	CheckAIKPubHash      = "binder.aik_pub_hash" // H(leaf SPKI)
	CheckBinding         = "binder.binding"      // H(leaf SPKI ‖ exported)
	CheckEvidenceNonce   = "evidence.nonce"      // the EAT's eat_nonce is derived from the binding
	CheckEvidencePolicy  = "evidence.policy"     // the evidence verifier (report data, signatures, policy)
	CheckEvidenceMissing = "evidence.verifier"   // no verifier configured: fail closed
)

// CheckError is a failed aTLS check. Check is one of the Check* constants.
type CheckError struct {
	Check string
	Err   error
}

func (e *CheckError) Error() string { return fmt.Sprintf("atls: check %s failed: %v", e.Check, e.Err) }
func (e *CheckError) Unwrap() error { return e.Err }

func fail(check string, format string, args ...any) error {
	return &CheckError{Check: check, Err: fmt.Errorf(format, args...)}
}

func wrap(check string, err error) error {
	if err == nil {
		return nil
	}
	var ce *CheckError
	if errors.As(err, &ce) {
		return err
	}
	return &CheckError{Check: check, Err: err}
}

// FailedCheck returns the name of the check that err reports, or "".
func FailedCheck(err error) string {
	var ce *CheckError
	if errors.As(err, &ce) {
		return ce.Check
	}
	return ""
}

// ErrTruncated is wrapped by parse errors for input that ends too early.
var ErrTruncated = errors.New("truncated")
