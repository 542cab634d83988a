package agent

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// checkLeaks fails t if, after everything t started is cleaned up, more
// goroutines or fds exist than before (style 24). Register it first so its
// cleanup runs last. Not for parallel tests.
func checkLeaks(t *testing.T) {
	g0, f0 := runtime.NumGoroutine(), countFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for {
			g, f := runtime.NumGoroutine(), countFDs()
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("leak: goroutines %d → %d, fds %d → %d\n%s", g0, g, f0, f, buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}
