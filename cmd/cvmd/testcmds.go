//go:build !cvmdtest

package main

// testCommands are the commands only a test build has (see
// testcmds_cvmdtest.go): none in the binary that is measured.
func testCommands() map[string]command { return nil }
