//go:build !cvmdtest

package supervisor

import "flag"

// testBuild reports whether this binary is a test build (-tags cvmdtest),
// the only kind with test switches. This one is not: it is the binary that
// is measured, and nothing can make it behave otherwise.
const testBuild = false

// testFlags adds the test switches of a test build; this build has none.
func testFlags(*flag.FlagSet, *options) {}
