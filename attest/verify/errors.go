package verify

import (
	"errors"
	"fmt"
)

// CheckError is a failed check: which one, and the values that failed it.
// Every refusal from Token is a *CheckError (use errors.As).
type CheckError struct {
	Check string // e.g. "snp.report_data", "vtpm.nonce", "eat.signature"
	Got   string // the value found, "" when not meaningful
	Want  string // the value required, "" when not meaningful
	Err   error  // the underlying error, if any
}

func (e *CheckError) Error() string {
	msg := "verify: " + e.Check
	switch {
	case e.Got != "" || e.Want != "":
		msg += fmt.Sprintf(": got %s, want %s", e.Got, e.Want)
		if e.Err != nil {
			msg += fmt.Sprintf(" (%v)", e.Err)
		}
	case e.Err != nil:
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *CheckError) Unwrap() error { return e.Err }

// ErrSimulated classifies refusals of simulated evidence (errors.Is).
var ErrSimulated = errors.New("evidence comes from a simulated platform; refused unless simulated evidence is allowed")

func fail(check string, err error) *CheckError { return &CheckError{Check: check, Err: err} }

func mismatch(check, got, want string) *CheckError {
	return &CheckError{Check: check, Got: got, Want: want}
}

// CheckName returns the name of the check err failed, or "".
func CheckName(err error) string {
	var ce *CheckError
	if errors.As(err, &ce) {
		return ce.Check
	}
	return ""
}
