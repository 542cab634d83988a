package testutil

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// leakGrace is how long CheckLeaks lets goroutines and fds of a finished test
// wind down (a gRPC transport, a deferred close) before it calls them leaked.
var leakGrace = 5 * time.Second

// CheckLeaks fails t if, once t and everything it registered with t.Cleanup
// has finished, more goroutines or open fds exist than when CheckLeaks was
// called. Call it first in the test, so that its cleanup runs last. It counts
// the whole process, so it is not for parallel tests.
func CheckLeaks(t testing.TB) {
	t.Helper()
	g0, f0 := runtime.NumGoroutine(), CountFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(leakGrace)
		for {
			g, f := runtime.NumGoroutine(), CountFDs()
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("leak: %d goroutines (was %d), %d fds (was %d)\n%s", g, g0, f, f0, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(20 * time.Millisecond) // polling the condition, bounded by deadline
		}
	})
}

// CountFDs is the number of fds this process has open.
func CountFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}
