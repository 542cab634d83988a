package atls

import (
	"context"

	"github.com/cvmd/cvmd/attest/verify"
)

// PolicyVerifier returns the EvidenceVerifier of the cvm CLI: attest/verify
// checks the token's signature, the platform evidence up to its roots, the
// policy, and that the report data and vTPM nonce are exactly those derived
// from this connection's binding (o.ReportData and o.Nonce are overwritten
// per connection).
func PolicyVerifier(o verify.Options) EvidenceVerifier {
	return func(_ context.Context, evidence []byte, want Expected) error {
		oo := o
		oo.ReportData = want.ReportData[:]
		oo.Nonce = want.Nonce[:]
		_, err := verify.Token(evidence, oo)
		return err
	}
}
