// Package logfwd is the logfwd child (`cvmd logfwd`). Placeholder until its issue lands:
// it only says READY and waits to be stopped.
package logfwd

import (
	"context"

	"github.com/cvmd/cvmd/children/child"
)

// Main runs the logfwd child.
func Main(ctx context.Context, env *child.Env) error {
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
