// Package testutil holds the helpers cvmd's tests share: a goroutine and fd
// leak check (CheckLeaks), a buffer safe for one writer goroutine and readers
// (Buffer), the gate and printer of `make bench` figures (BenchOn, Bench),
// the registry that lets a test binary re-execute itself as a helper process
// (Main, HelperCommand), and a bounded poll for conditions nothing signals
// (WaitUntil).
//
// It is for tests only: nothing but *_test.go files may import it
// (tests/layout_test.go checks), and it imports the standard library only, so
// that any package's tests, internal or external, can use it without a cycle.
package testutil
