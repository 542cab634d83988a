//go:build !nosim

package attestation

import (
	"testing"
	"time"
)

// TestCloseDoesNotWaitForSNPWarmUp: the simulated SNP is built unasked only
// snpWarmDelay after start; a Service closed before then returns at once
// (Close waits for the warm-up goroutine, which must not sleep it out).
func TestCloseDoesNotWaitForSNPWarmUp(t *testing.T) {
	s := simulated(t, t.TempDir())
	t0 := time.Now()
	s.Close()
	if d := time.Since(t0); d > snpWarmDelay/2 {
		t.Fatalf("Close took %v: it waited for the deferred SNP warm-up", d)
	}
}
