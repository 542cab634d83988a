// Package agent is the agent child (`cvmd agent`). Placeholder until its issue lands:
// it only says READY and waits to be stopped.
package agent

import (
	"context"

	"github.com/cvmd/cvmd/children/child"
)

// Main runs the agent child.
func Main(ctx context.Context, env *child.Env) error {
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
