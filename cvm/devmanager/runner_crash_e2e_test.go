package devmanager_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvmd/cvmd/cvm/devmanager"
)

// crashAlgo waits for a file named "go" among its datasets, which the test
// makes only once the algorithm runs again, then writes its result: a run
// that is not re-run never ends by itself.
const crashAlgo = `#!/bin/sh
while [ ! -e datasets/go ]; do sleep 0.05; done
echo "rerun ok" > results/result.txt
`

// TestE2ERunnerKilledDuringRunReRunsAlgorithm: kill -9 of the runner while
// the algorithm runs. The supervisor restarts the runner (and killed the
// algorithm's sandbox with it); the agent runs the algorithm again in a
// fresh sandbox, says so in a Running/Warning event, and the computation
// completes with the second run's result.
func TestE2ERunnerKilledDuringRunReRunsAlgorithm(t *testing.T) {
	g := newGuest(t)
	algo := filepath.Join(g.work, "wait-algo.sh")
	if err := os.WriteFile(algo, []byte(crashAlgo), 0o755); err != nil {
		t.Fatal(err)
	}
	req, err := devmanager.Spec{ID: "e2e-1", Name: "rerun", Algorithm: algo, AlgoType: "bin", Datasets: []string{g.data},
		PublicKey: filepath.Join(g.work, "public.pem")}.Build()
	if err != nil {
		t.Fatal(err)
	}
	g.req = req
	srv := g.startManager(true)
	g.startCvmd()
	g.waitRunRes(srv)
	g.retry("algo", algo, g.priv, "-a", "bin")
	g.retry("data", g.data, g.priv)

	first := g.waitProcess("the algorithm", isAlgorithm, 0)
	runner := g.waitProcess("the runner", isRunner, 0)
	if err := syscall.Kill(runner, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 of the runner (pid %d): %v", runner, err)
	}
	second := g.waitProcess("the algorithm run again", isAlgorithm, first)
	os.WriteFile(filepath.Join(g.work, "state", "computation", "datasets", "go"), nil, 0o644)
	if r := g.result(); r != "rerun ok\n" {
		t.Fatalf("result.txt = %q, want the re-run's", r)
	}
	want := "runner crashed, re-running algorithm (attempt 2/3)"
	if err := srv.Wait(g.ctx, has(func(m devmanager.Received) bool {
		e := m.Msg.GetAgentEvent()
		return e != nil && e.GetEventType() == "Running" && e.GetStatus() == "Warning" && strings.Contains(string(e.GetDetails()), want)
	})); err != nil {
		seen, _ := g.events()
		t.Fatalf("no Running/Warning event %q reached the manager (seen %v)", want, seen)
	}
	if err := srv.Wait(g.ctx, func([]devmanager.Received) bool { seen, _ := g.events(); return seen["agent/Running/Completed"] }); err != nil {
		t.Fatal("the computation's Running/Completed event never reached the manager")
	}
	t.Logf("runner %d killed during algorithm %d; re-run as %d", runner, first, second)
}

// waitProcess polls until a process below cvmd matches, other than not,
// and returns its pid.
func (g *guest) waitProcess(what string, match func(argv []string) bool, not int) int {
	g.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, pid := range descendants(g.cvmdPid) {
			if pid == not {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && match(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")) {
				return pid
			}
		}
		time.Sleep(10 * time.Millisecond) // polling /proc, bounded by deadline
	}
	g.t.Fatalf("%s never ran below cvmd (pid %d)", what, g.cvmdPid)
	return 0
}

func isAlgorithm(argv []string) bool {
	return len(argv) >= 2 && argv[0] == "/bin/sh" && argv[1] == "/cocos/algo"
}

func isRunner(argv []string) bool { return len(argv) >= 2 && argv[len(argv)-1] == "runner" }

// descendants lists every process below root.
func descendants(root int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which ends at the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			parent[pid], _ = strconv.Atoi(f[1])
		}
	}
	var out []int
	for pid := range parent {
		for p, n := parent[pid], 0; p > 1 && n < 64; p, n = parent[p], n+1 {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}
