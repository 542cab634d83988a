// Package ingress is the ingress child (`cvmd ingress`). Placeholder until its issue lands:
// it only says READY and waits to be stopped.
package ingress

import (
	"context"

	"github.com/cvmd/cvmd/children/child"
)

// Main runs the ingress child.
func Main(ctx context.Context, env *child.Env) error {
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
