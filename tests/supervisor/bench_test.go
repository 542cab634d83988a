package supervisor_test

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/internal/testutil"
)

func median(ds []float64) float64 {
	s := append([]float64(nil), ds...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func percentile(ds []float64, p float64) float64 {
	s := append([]float64(nil), ds...)
	sort.Float64s(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// TestBenchBootToReady: process start of `cvmd supervise --dev` → every
// child READY (as children.json says), median of 10 boots.
func TestBenchBootToReady(t *testing.T) {
	testutil.BenchOn(t)
	var ms, cpu []float64
	for i := 0; i < 10; i++ {
		d := startDevBin(t, measuredCvmd(t), true)
		ms = append(ms, float64(d.ready.Sub(d.started).Microseconds())/1000)
		d.stop(10 * time.Second)
		// CPU of the whole tree (every process is waited for by its parent),
		// boot and shutdown: the figure that does not depend on the load.
		if ps := d.cmd.ProcessState; ps != nil {
			cpu = append(cpu, float64((ps.UserTime()+ps.SystemTime()).Microseconds())/1000)
		}
	}
	t.Logf("boots (ms): %v; load average %s", ms, loadavg())
	testutil.Bench("boot_to_ready_ms", median(ms), "ms")
	if len(cpu) > 0 {
		testutil.Bench("boot_and_shutdown_cpu_ms", median(cpu), "ms")
	}
}

// TestBenchSpawn: one sandboxed child (namespaces, cgroup, seccomp, rootfs
// view, pivot_root) from Start to its first byte on fd 3, run from a sealed
// binary as the supervisor does. 50 spawns.
func TestBenchSpawn(t *testing.T) {
	testutil.BenchOn(t)
	var ru0 unix.Rusage
	unix.Getrusage(unix.RUSAGE_CHILDREN, &ru0)
	out, err := exec.Command(cvmd(t), "probe", "spawnbench", t.TempDir(), "50").CombinedOutput()
	if err != nil {
		t.Fatalf("spawnbench: %v\n%s", err, out)
	}
	var ms []float64
	for _, l := range strings.Fields(string(out)) {
		us, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("spawnbench output %q", out)
		}
		ms = append(ms, float64(us)/1000)
	}
	t.Logf("load average %s", loadavg())
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_CHILDREN, &ru) == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		t.Logf("CPU of the spawn benchmark and its sandboxes: %v (%.1f ms per spawn)", cpu, float64(cpu.Microseconds())/1000/50)
	}
	testutil.Bench("spawn_p50_ms", percentile(ms, 0.5), "ms")
	testutil.Bench("spawn_p99_ms", percentile(ms, 0.99), "ms")
}

// TestBenchRestart: kill -9 of a child → its replacement READY and its
// peers rewired (the supervisor sends the rewires before the replacement
// can say READY). Each child is killed once per boot, so every restart is a
// first one (no back-off). Two boots, 12 restarts.
func TestBenchRestart(t *testing.T) {
	testutil.BenchOn(t)
	var ms []float64
	for boot := 0; boot < 2; boot++ {
		d := startDevBin(t, measuredCvmd(t), true)
		for _, name := range childNames {
			old := d.status().child(name)
			pid := d.hostPid(old.Pid)
			t0 := time.Now()
			unix.Kill(pid, unix.SIGKILL)
			d.waitAll(func(s *status) bool {
				c := s.child(name)
				return c.Generation == old.Generation+1 && c.Status == "ready"
			}, 30*time.Second, name+" back")
			ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
		}
		d.stop(10 * time.Second)
	}
	t.Logf("restarts (ms): %v; load average %s", ms, loadavg())
	testutil.Bench("restart_ms", median(ms), "ms")
}

func procKiB(pid int, file, key string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseFloat(f[0], 64)
				return n
			}
		}
	}
	return 0
}

// TestBenchMemory: after 2 s idle, the supervisor proper's RSS and the
// total PSS of PID 1, the supervisor proper and the six children.
func TestBenchMemory(t *testing.T) {
	testutil.BenchOn(t)
	d := startDevBin(t, measuredCvmd(t), true)
	time.Sleep(2 * time.Second)
	st := d.status()
	proper := d.hostPid(st.Pid)
	var pss float64
	for _, pid := range d.inNS() {
		pss += procKiB(pid, "smaps_rollup", "Pss")
	}
	t.Logf("PID 1 RSS %.1f MiB; processes %d", procKiB(d.pid1, "status", "VmRSS")/1024, len(d.inNS()))
	testutil.Bench("supervisor_rss_mib", procKiB(proper, "status", "VmRSS")/1024, "MiB")
	testutil.Bench("pid1_rss_mib", procKiB(d.pid1, "status", "VmRSS")/1024, "MiB")
	testutil.Bench("total_pss_mib", pss/1024, "MiB")
}
