// Package runner is the runner child (`cvmd runner`). Placeholder until its issue lands:
// it only says READY and waits to be stopped.
package runner

import (
	"context"

	"github.com/cvmd/cvmd/children/child"
)

// Main runs the runner child.
func Main(ctx context.Context, env *child.Env) error {
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
