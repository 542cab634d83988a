//go:build !race

package testutil

// Race reports whether this binary was built with the race detector.
const Race = false
