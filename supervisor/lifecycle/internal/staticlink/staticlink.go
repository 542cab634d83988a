// Package staticlink, imported by a test, links its test binary statically.
// The lifecycle tests run their own test binary as the children of a real
// Supervisor (TestMain dispatches on the child's name, as cvmd does); a
// child runs in an empty sandbox, where a dynamically linked binary would
// find no libraries. cmd/cvmd is linked statically by its build flags and
// never imports this package; only the tests of supervisor/lifecycle do.
package staticlink

// #cgo LDFLAGS: -static
import "C"
