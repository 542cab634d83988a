//go:build race

package testutil

// Race reports whether this binary was built with the race detector, whose
// shadow memory multiplies a process's RSS (5–10×): memory bounds of a
// process started from the test binary (HelperCommand) do not hold then.
const Race = true
