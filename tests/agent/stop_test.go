package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/agentctl"
)

// TestStopWhileRunningThenNextComputation: Stop interrupts a running
// algorithm, clears the computation, and the same agent runs the next one
// (Cocos needs an agent restart for that).
func TestStopWhileRunningThenNextComputation(t *testing.T) {
	testutil.CheckLeaks(t)
	w := newWorld(t, agenttest.Options{}, "#!/bin/sh\nexec sleep 60\n")
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	w.waitState(t, "Running")
	start := time.Now()
	res, err := w.control.Stop(context.Background(), &agentctl.StopRequest{})
	if err != nil || res.GetError() != "" {
		t.Fatalf("stop: %v %q", err, res.GetError())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stop took %v", d)
	}
	if s := w.state(t); s != "ReceivingManifest" {
		t.Fatalf("state after stop: %s", s)
	}
	ents, _ := os.ReadDir(w.compDir)
	for _, e := range ents {
		if e.Name() != ".incoming" {
			t.Errorf("left in the computation dir after stop: %s", e.Name())
		}
	}
	// A second computation in the same agent.
	algo2 := filepath.Join(w.dir, "algo2.sh")
	os.WriteFile(algo2, []byte("#!/bin/sh\necho second > results/out.txt\n"), 0o755)
	m := agenttest.NewManifest("comp-2", w.algoP, agenttest.HashFile(t, algo2), "bin", nil, w.cons1)
	if r, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || r.GetError() != "" {
		t.Fatalf("second start: %v %v", err, r)
	}
	w.mustCVM(t, false, "algo", algo2, w.algoP.KeyFile)
	w.waitState(t, "ConsumingResults")
	w.mustCVM(t, false, "result", w.cons1.KeyFile, "-o", w.dir)
	if st, _ := w.control.State(context.Background(), &agentctl.StateRequest{}); st.GetComputationId() != "comp-2" || st.GetState() != "Complete" {
		t.Fatalf("state %v", st)
	}
}
