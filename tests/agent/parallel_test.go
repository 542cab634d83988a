package agent

import (
	"strings"
	"sync"
	"testing"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/internal/testutil"
)

// TestParallelUploads: datasets may arrive at the same time; two uploads of
// the same dataset race and exactly one wins.
func TestParallelUploads(t *testing.T) {
	testutil.CheckLeaks(t)
	w := newWorld(t, agenttest.Options{}, algoScript)
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	type res struct {
		code int
		errs string
	}
	var mu sync.Mutex
	var results []res
	var wg sync.WaitGroup
	for _, up := range [][2]string{{w.dsA, w.dataA.KeyFile}, {w.dsA, w.dataA.KeyFile}, {w.dsB, w.dataB.KeyFile}} {
		wg.Go(func() {
			code, _, errs := w.cvm(t, false, "data", up[0], up[1])
			mu.Lock()
			results = append(results, res{code, errs})
			mu.Unlock()
		})
	}
	wg.Wait()
	ok, dup := 0, 0
	for _, r := range results {
		switch {
		case r.code == 0:
			ok++
		// The loser is refused either as a duplicate or, when the winner
		// completed the set first, because the agent has moved on.
		case strings.Contains(r.errs, `dataset "a.csv" was already received`),
			strings.Contains(r.errs, "agent not expecting this operation in the current state"):
			dup++
		default:
			t.Errorf("unexpected outcome: %d %s", r.code, r.errs)
		}
	}
	if ok != 2 || dup != 1 {
		t.Fatalf("%d successes and %d duplicates, want 2 and 1: %v", ok, dup, results)
	}
	w.waitState(t, "ConsumingResults")
}
