package supervisor_test

import (
	"bufio"
	"fmt"
	"io"
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
// child READY (as children.json says), median of 10 boots, against `runc
// run` of one sandbox (TestBenchSpawn's), three between boots.
func TestBenchBootToReady(t *testing.T) {
	testutil.BenchOn(t)
	s := startSpawner(t)
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
		for j := 0; j < 3; j++ {
			s.spawn("runc")
		}
	}
	runc := percentile(s.ms["runc"], 0.5)
	t.Logf("boots (ms): %v; runc (ms): %v; load average %s", ms, s.ms["runc"], loadavg())
	testutil.Bench("boot_to_ready_ms", median(ms), "ms")
	if len(cpu) > 0 {
		testutil.Bench("boot_and_shutdown_cpu_ms", median(cpu), "ms")
	}
	testutil.Bench("boot_runc_p50_ms", runc, "ms")
	testutil.Bench("boot_vs_runc", median(ms)/runc, "ratio")
}

// spawner is a `cvmd probe spawnbench` server: it times one spawn per
// request, cvmd's (from a standby sandbox or cold) or `runc run` of the same
// sandbox, so that a benchmark can interleave them with its own figures and
// every ratio compares spawns made under the same load.
type spawner struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	// ms and cpu are the wall and CPU milliseconds of every spawn, by mode.
	ms, cpu map[string][]float64
}

func startSpawner(t *testing.T) *spawner {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc, the reference of the spawn figures, is not installed (scripts/deps.sh installs it): %v", err)
	}
	s := &spawner{t: t, cmd: exec.Command(cvmd(t), "probe", "spawnbench", t.TempDir()), ms: map[string][]float64{}, cpu: map[string][]float64{}}
	s.cmd.Stderr = os.Stderr
	s.cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	var err error
	if s.in, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.out = bufio.NewScanner(out)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.in.Close()
		if err := s.cmd.Wait(); err != nil {
			t.Errorf("spawnbench: %v", err)
		}
	})
	return s
}

// spawn times one spawn: "pool" (Exec of a sandbox built ahead, as the
// supervisor starts a child created at boot), "cold" (create and start) or
// "runc" (`runc run`). It returns the milliseconds to the child's first byte.
func (s *spawner) spawn(mode string) float64 {
	s.t.Helper()
	fmt.Fprintln(s.in, mode)
	if !s.out.Scan() {
		s.t.Fatalf("spawnbench %s: no answer: %v", mode, s.out.Err())
	}
	f := strings.Fields(s.out.Text())
	if len(f) != 2 {
		s.t.Fatalf("spawnbench %s: %s", mode, s.out.Text())
	}
	us, err1 := strconv.Atoi(f[0])
	cpu, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		s.t.Fatalf("spawnbench %s: %s", mode, s.out.Text())
	}
	ms := float64(us) / 1000
	s.ms[mode] = append(s.ms[mode], ms)
	s.cpu[mode] = append(s.cpu[mode], float64(cpu)/1000)
	return ms
}

// TestBenchSpawn: one sandboxed child (namespaces, cgroup, seccomp, rootfs
// view, pivot_root) from the spawn to its first byte on fd 3, run from a
// sealed binary as the supervisor does: Exec of a sandbox built ahead
// (spawn_p50_ms: the start of a child created at boot; a standby, whose
// program runs already, is cheaper still, see TestBenchRestart) and cold
// (spawn_cold_p50_ms: create and start, what a child without a standby pays
// at a restart), against `runc run` of the same sandbox and child,
// interleaved round by round. 40 rounds.
func TestBenchSpawn(t *testing.T) {
	testutil.BenchOn(t)
	s := startSpawner(t)
	modes := []string{"pool", "cold", "runc"}
	for i := 0; i < 40; i++ {
		for j := range modes {
			s.spawn(modes[(i+j)%len(modes)])
		}
	}
	t.Logf("load average %s", loadavg())
	for _, m := range modes {
		t.Logf("%s: p50 %.2f ms, p99 %.2f ms, CPU per spawn (median) %.1f ms", m, percentile(s.ms[m], 0.5), percentile(s.ms[m], 0.99), median(s.cpu[m]))
	}
	pool, cold, runc := percentile(s.ms["pool"], 0.5), percentile(s.ms["cold"], 0.5), percentile(s.ms["runc"], 0.5)
	testutil.Bench("spawn_p50_ms", pool, "ms")
	testutil.Bench("spawn_p99_ms", percentile(s.ms["pool"], 0.99), "ms")
	testutil.Bench("spawn_cold_p50_ms", cold, "ms")
	testutil.Bench("runc_p50_ms", runc, "ms")
	testutil.Bench("spawn_vs_runc", pool/runc, "ratio")
	testutil.Bench("spawn_cold_vs_runc", cold/runc, "ratio")
}

// TestBenchRestart: kill -9 of a child → its replacement READY and its
// peers rewired (the supervisor sends the rewires before the replacement
// can say READY), once every child the table gives a standby has it built.
// The replacement of those is their standby (restart_ms, against cvmd's own
// spawn from a sandbox built ahead: restart_vs_spawn); the others' is a new
// sandbox (restart_cold_ms, against the cold spawn). Each child is killed
// once per boot, so every restart is a first one (no back-off). Three
// boots, each restart followed by a spawn of each kind (TestBenchSpawn's),
// the references, made under the same load.
func TestBenchRestart(t *testing.T) {
	testutil.BenchOn(t)
	s := startSpawner(t)
	tab, _ := printedTable(t)
	ms := map[bool][]float64{} // by whether the child has a standby
	per := map[string][]float64{}
	for boot := 0; boot < 3; boot++ {
		d := startDevBin(t, measuredCvmd(t), true)
		d.waitAll(allStandbys(t), 30*time.Second, "every child's standby")
		for _, name := range childNames {
			old := d.status().child(name)
			pid := d.hostPid(old.Pid)
			t0 := time.Now()
			unix.Kill(pid, unix.SIGKILL)
			d.waitAll(func(s *status) bool {
				c := s.child(name)
				return c.Generation == old.Generation+1 && c.Status == "ready"
			}, 30*time.Second, name+" back")
			took := float64(time.Since(t0).Microseconds()) / 1000
			standby := tab.Child(name).Standby
			ms[standby] = append(ms[standby], took)
			per[name] = append(per[name], took)
			s.spawn("pool")
			s.spawn("cold")
		}
		d.stop(10 * time.Second)
	}
	spawn, cold := percentile(s.ms["pool"], 0.5), percentile(s.ms["cold"], 0.5)
	for _, name := range childNames {
		t.Logf("%s (standby %v): restarts (ms) %v", name, tab.Child(name).Standby, per[name])
	}
	t.Logf("spawns (ms): %v; cold spawns (ms): %v; load average %s", s.ms["pool"], s.ms["cold"], loadavg())
	testutil.Bench("restart_ms", median(ms[true]), "ms")
	testutil.Bench("restart_spawn_p50_ms", spawn, "ms")
	testutil.Bench("restart_vs_spawn", median(ms[true])/spawn, "ratio")
	if len(ms[false]) > 0 {
		testutil.Bench("restart_cold_ms", median(ms[false]), "ms")
		testutil.Bench("restart_spawn_cold_p50_ms", cold, "ms")
		testutil.Bench("restart_cold_vs_spawn_cold", median(ms[false])/cold, "ratio")
	}
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

// TestBenchMemory: once every child the table gives a standby has it, after
// 2 s idle, the supervisor proper's RSS and the total PSS of PID 1, the
// supervisor proper, the six children and their standbys; and the standbys'
// share of it (standby_pss_mib).
func TestBenchMemory(t *testing.T) {
	testutil.BenchOn(t)
	d := startDevBin(t, measuredCvmd(t), true)
	d.waitAll(allStandbys(t), 30*time.Second, "every child's standby")
	time.Sleep(2 * time.Second)
	st := d.status()
	proper := d.hostPid(st.Pid)
	standbys := map[int]bool{}
	for _, c := range st.Children {
		if c.StandbyPid != 0 {
			standbys[d.hostPid(c.StandbyPid)] = true
		}
	}
	var pss, standbyPss float64
	for _, pid := range d.inNS() {
		p := procKiB(pid, "smaps_rollup", "Pss")
		pss += p
		if standbys[pid] {
			standbyPss += p
		}
	}
	t.Logf("PID 1 RSS %.1f MiB; processes %d, of which %d standbys; load average %s", procKiB(d.pid1, "status", "VmRSS")/1024, len(d.inNS()), len(standbys), loadavg())
	testutil.Bench("supervisor_rss_mib", procKiB(proper, "status", "VmRSS")/1024, "MiB")
	testutil.Bench("pid1_rss_mib", procKiB(d.pid1, "status", "VmRSS")/1024, "MiB")
	testutil.Bench("total_pss_mib", pss/1024, "MiB")
	testutil.Bench("standby_pss_mib", standbyPss/1024, "MiB")
}
