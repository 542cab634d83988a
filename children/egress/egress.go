// Package egress is the egress child (`cvmd egress`). Placeholder until its issue lands:
// it only says READY and waits to be stopped.
package egress

import (
	"context"

	"github.com/cvmd/cvmd/children/child"
)

// Main runs the egress child.
func Main(ctx context.Context, env *child.Env) error {
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
