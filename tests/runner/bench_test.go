package runner_test

import (
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/internal/testutil"
)

func p50(ds []time.Duration) float64 {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[len(s)/2].Microseconds()) / 1000
}

// TestBenchAlgoSandbox measures Run request → the algorithm's first
// instruction (its own clock reading, printed with --stamp), for `bin`,
// through the runner and the supervisor's handler over a real control
// channel. The reference is a plain fork+exec of the same binary.
func TestBenchAlgoSandbox(t *testing.T) {
	testutil.BenchOn(t)
	w := newWorld(t, worldOpts{})
	bin := testBinary(t, "add")
	w.putFile(t, "algo", bin, 0o600)
	const n = 25
	var starts, e2e, ref []time.Duration
	for i := 0; i < n; i++ {
		w.rec.reset()
		t0 := time.Now()
		resp := w.run(t, "bin", "--stamp", "--a", "1", "--b", "2")
		total := time.Since(t0)
		if resp.GetError() != "" {
			t.Fatalf("run: %s", resp.GetError())
		}
		var ns int64
		for _, l := range w.rec.output("stdout") {
			if v, ok := strings.CutPrefix(l, "STARTED "); ok {
				ns, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		if ns == 0 {
			t.Fatalf("no STARTED line:\n%s", w.rec.all())
		}
		starts = append(starts, time.Unix(0, ns).Sub(t0))
		e2e = append(e2e, total)
		t1 := time.Now()
		out, err := exec.Command(bin, "--stamp", "--out", os.DevNull).Output()
		if err != nil {
			t.Fatal(err)
		}
		v, _ := strconv.ParseInt(strings.Fields(string(out))[1], 10, 64)
		ref = append(ref, time.Unix(0, v).Sub(t1))
	}
	var prep, start []time.Duration
	for _, l := range strings.Split(w.supLog.String(), "\n") {
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "prepare_ms="); ok {
				ms, _ := strconv.Atoi(v)
				prep = append(prep, time.Duration(ms)*time.Millisecond)
			}
			if v, ok := strings.CutPrefix(f, "start_ms="); ok {
				ms, _ := strconv.Atoi(v)
				start = append(start, time.Duration(ms)*time.Millisecond)
			}
		}
	}
	if len(prep) > 0 && len(start) > 0 {
		t.Logf("supervisor side p50: prepare %.0f ms (netns, tmpfs, binds), libcontainer start %.0f ms", p50(prep), p50(start))
	}
	testutil.Bench("algo_sandbox_ms", p50(starts), "ms")
	testutil.Bench("algo_exec_ref_ms", p50(ref), "ms")
	testutil.Bench("algo_e2e_ms", p50(e2e), "ms")
}

// TestBenchAlgoE2EPython measures the python addition example end to end
// (venv made per run, no requirements).
func TestBenchAlgoE2EPython(t *testing.T) {
	testutil.BenchOn(t)
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", "testdata/python/addition.py", 0o600)
	var ds []time.Duration
	for i := 0; i < 7; i++ {
		t0 := time.Now()
		resp := w.run(t, "python", "--a", "1", "--b", "2")
		ds = append(ds, time.Since(t0))
		if resp.GetError() != "" {
			t.Fatalf("run: %s", resp.GetError())
		}
		os.Remove(w.comp + "/results/result.txt")
	}
	testutil.Bench("algo_e2e_python_ms", p50(ds), "ms")
}
