package testutil

import (
	"testing"
	"time"
)

// pollEvery is how often WaitUntil checks its condition.
const pollEvery = 2 * time.Millisecond

// WaitUntil polls cond until it holds, failing t (naming what it waited
// for) if it does not within d. It is for conditions nothing signals (a
// counter, a file, a process); prefer a channel when there is one.
func WaitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(pollEvery)
	}
}
