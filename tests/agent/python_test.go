package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/children/agent/agenttest"
)

// TestPythonAlgorithmRequest: algo_type, requirements, args and the python
// runtime reach the runner as Cocos's CLI sends them.
func TestPythonAlgorithmRequest(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("no python3")
	}
	w := &world{dir: t.TempDir()}
	w.setup(t, "")
	py := filepath.Join(w.dir, "algo.py")
	os.WriteFile(py, []byte("import sys\nopen('results/out.txt','w').write(' '.join(sys.argv[1:]))\n"), 0o644)
	req := filepath.Join(w.dir, "requirements.txt")
	os.WriteFile(req, []byte("numpy==2.0\n"), 0o644)
	w.h = agenttest.Start(t, agenttest.Options{})
	w.useHarness()
	m := agenttest.NewManifest("py", w.algoP, agenttest.HashFile(t, py), "", nil, w.cons1)
	if r, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || r.GetError() != "" {
		t.Fatalf("start: %v %v", err, r)
	}
	w.mustCVM(t, false, "algo", py, w.algoP.KeyFile, "-a", "python", "-r", req, "--args", "--epochs", "--args", "3")
	w.waitState(t, "ConsumingResults")
	rs := w.h.Runner.Requests()
	if len(rs) != 1 {
		t.Fatalf("%d run requests", len(rs))
	}
	r := rs[0]
	if r.GetAlgoType() != "python" || r.GetAlgorithmPath() != "algo" || r.GetRequirementsPath() != "requirements.txt" ||
		strings.Join(r.GetArgs(), " ") != "--epochs 3" || r.GetPythonRuntime() != "python3" || r.GetComputationId() != "py" {
		t.Fatalf("run request %v", r)
	}
	w.mustCVM(t, false, "result", w.cons1.KeyFile, "-o", w.dir)
}
