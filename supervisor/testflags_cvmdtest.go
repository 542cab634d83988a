//go:build cvmdtest

package supervisor

import "flag"

// testBuild reports whether this binary is a test build (-tags cvmdtest):
// this one is, and says so in its first log line. It is never the measured
// binary (its hash differs), and only tests run it.
const testBuild = true

// testFlags adds the test switches: children replaced by a misbehaving
// probe, and a panic of the supervisor proper on SIGUSR1.
func testFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.misbehave, "test-misbehave", "", "test build only: CHILD=MODE[,CHILD=MODE] replaces children by a probe that breaks the child contract (garbage, silent, startfail, crash, stubborn)")
	fs.BoolVar(&o.testPanic, "test-panic-on-sigusr1", false, "test build only: SIGUSR1 makes the supervisor proper panic")
}
