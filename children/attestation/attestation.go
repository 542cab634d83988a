// Package attestation is the attestation child (`cvmd attestation`). Placeholder until its issue lands:
// it only says READY and waits to be stopped.
package attestation

import (
	"context"

	"github.com/cvmd/cvmd/children/child"
)

// Main runs the attestation child.
func Main(ctx context.Context, env *child.Env) error {
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
