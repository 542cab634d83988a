// Package supervisor is cvmd's PID 1. Placeholder until issue 2 lands.
package supervisor

import "errors"

// Main runs the supervisor with its command-line arguments.
func Main(args []string) error {
	return errors.New("supervisor: not built yet")
}
