package supervisor

import (
	"testing"
	"time"

	"github.com/cvmd/cvmd/supervisor/lifecycle"
	"github.com/cvmd/cvmd/supervisor/table"
)

// PID 1 must give the supervisor proper the time an orderly shutdown can
// take, or it kills it halfway (it gave 4 s against 4 levels × 2 s of grace
// and 2 s after SIGKILL).
func TestPID1GraceCoversAnOrderlyShutdown(t *testing.T) {
	for _, grace := range []time.Duration{2 * time.Second, 5 * time.Second} {
		tab := table.Default()
		tab.StopGrace = grace
		worst := time.Duration(tab.Depth()) * (tab.StopGrace + lifecycle.KillMargin)
		if got := properGrace(tab); got <= worst {
			t.Errorf("stop grace %v: PID 1 waits %v for a shutdown that can take %v", grace, got, worst)
		}
	}
}
