//go:build cvmdtest

package main

import "github.com/cvmd/cvmd/supervisor/probe"

// testCommands are the commands of a test build (`-tags cvmdtest`, make's
// bin/cvmd-test): `cvmd probe` looks at a child's sandbox from inside and
// stands in for misbehaving children. The measured binary has none of it.
func testCommands() map[string]command {
	return map[string]command{
		"probe": func(args []string) int { return exit(probe.Main(args)) },
	}
}
