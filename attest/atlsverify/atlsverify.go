// Package atlsverify joins the aTLS client (attest/atls) and the evidence
// verifier (attest/verify): Policy is the EvidenceVerifier the cvm CLI gives
// the aTLS client. It lives apart from atls so that the ingress child, which
// serves aTLS but verifies nothing, does not link the verifier (and its
// CoRIM, TDX and SNP checking code) into the measured cvmd binary.
//
// Only client-side code (the cvm CLI, tests) imports it.
package atlsverify

import (
	"context"

	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/attest/verify"
)

// Policy returns an EvidenceVerifier that checks the token with
// verify.Token: signature, platform evidence up to its roots, the policy,
// and that the report data and vTPM nonce are exactly those derived from
// this connection's binding (o.ReportData and o.Nonce are overwritten per
// connection).
func Policy(o verify.Options) atls.EvidenceVerifier {
	return func(_ context.Context, evidence []byte, want atls.Expected) error {
		oo := o
		oo.ReportData = want.ReportData[:]
		oo.Nonce = want.Nonce[:]
		_, err := verify.Token(evidence, oo)
		return err
	}
}
