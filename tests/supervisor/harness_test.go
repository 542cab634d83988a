// Package supervisor_test drives a real `cvmd supervise --dev` (PID 1 of new
// PID and mount namespaces, real libcontainer sandboxes, seccomp and
// cgroups) and checks the supervisor's promises from outside. Needs root.
//
// Most tests run the test build of cvmd (-tags cvmdtest: `cvmd probe` and
// the --test-* switches); the benchmarks of boot, restart and memory, and
// the test that the measured binary has no test switch, run the measured
// build (make's bin/cvmd).
package supervisor_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/internal/testutil"
)

// binary is one build of cvmd: $CVMD_BIN/<name>, or built once with tags.
type binary struct {
	name, tags string
	once       sync.Once
	path       string
	err        error
}

var (
	testBuild     = &binary{name: "cvmd-test", tags: "seccomp netgo osusergo grpcnotrace cvmdtest"}
	measuredBuild = &binary{name: "cvmd", tags: "seccomp netgo osusergo grpcnotrace"}
	builtDir      string // of the binaries built here, removed at the end
)

func (b *binary) get(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	b.once.Do(func() {
		if d := os.Getenv("CVMD_BIN"); d != "" {
			b.path = filepath.Join(d, b.name)
			return
		}
		if builtDir == "" {
			if builtDir, b.err = os.MkdirTemp("", "cvmd-bin-"); b.err != nil {
				return
			}
		}
		b.path = filepath.Join(builtDir, b.name)
		cmd := exec.Command("go", "build", "-tags", b.tags, "-ldflags", `-linkmode external -extldflags "-static"`, "-o", b.path, "./cmd/cvmd")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %v\n%s", b.name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// cvmd returns the test build of cvmd (with `cvmd probe` and --test-*).
func cvmd(t *testing.T) string { t.Helper(); return testBuild.get(t) }

// measuredCvmd returns the build of cvmd that is measured and deployed.
func measuredCvmd(t *testing.T) string { t.Helper(); return measuredBuild.get(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

type childInfo struct {
	Name       string `json:"name"`
	Status     string `json:"status"`
	Pid        int    `json:"pid"`
	Generation uint32 `json:"generation"`
	Restarts   int    `json:"restarts"`
	Serving    bool   `json:"serving"`
	Sandbox    string `json:"sandbox"`
	StandbyPid int    `json:"standby_pid"`
}

type status struct {
	Pid      int         `json:"pid"`
	Listen   string      `json:"listen"`
	Children []childInfo `json:"children"`
}

// allStandbys returns the condition "every child READY, and the standby
// of each child whose entry in the printed table has one built".
func allStandbys(t *testing.T) func(*status) bool {
	t.Helper()
	tab, _ := printedTable(t)
	return func(s *status) bool {
		if !allReady(s) {
			return false
		}
		for _, c := range s.Children {
			if tab.Child(c.Name).Standby && c.StandbyPid == 0 {
				return false
			}
		}
		return true
	}
}

func (s *status) child(name string) childInfo {
	for _, c := range s.Children {
		if c.Name == name {
			return c
		}
	}
	return childInfo{}
}

// dev is one running `cvmd supervise --dev`.
type dev struct {
	t     *testing.T
	bin   string
	state string
	cmd   *exec.Cmd
	out   *testutil.Buffer
	done  chan error
	pid1  int // host pid of the namespace's PID 1
	// started and ready: when the process was started and when
	// children.json first showed every child READY.
	started, ready time.Time
}

var childNames = []string{"logfwd", "attestation", "egress", "runner", "agent", "ingress"}

// startDev starts the supervisor and waits until every child is READY.
func startDev(t *testing.T, extra ...string) *dev {
	t.Helper()
	return startDevWith(t, true, extra...)
}

// startDevWith starts the supervisor; with waitReady it waits until every
// child is READY, otherwise only until children.json exists.
func startDevWith(t *testing.T, waitReady bool, extra ...string) *dev {
	t.Helper()
	return startDevBin(t, cvmd(t), waitReady, extra...)
}

// startDevBin is startDevWith for a given build of cvmd.
func startDevBin(t *testing.T, bin string, waitReady bool, extra ...string) *dev {
	t.Helper()
	state := t.TempDir()
	args := append([]string{"supervise", "--dev", "--state", state, "--listen", "127.0.0.1:0"}, extra...)
	d := &dev{t: t, bin: bin, state: state, cmd: exec.Command(bin, args...), out: &testutil.Buffer{}, done: make(chan error, 1)}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	d.started = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("supervisor output:\n%s", d.out.String())
		}
	})
	if waitReady {
		d.waitAll(func(s *status) bool { return allReady(s) }, 60*time.Second, "all children ready")
		d.ready = time.Now()
	} else {
		d.waitAll(func(s *status) bool { return len(s.Children) > 0 }, 60*time.Second, "children.json")
	}
	// The dev process's only child is the namespace's PID 1.
	deadline := time.Now().Add(2 * time.Second)
	for d.pid1 == 0 && time.Now().Before(deadline) {
		d.pid1 = childOf(d.cmd.Process.Pid)
		time.Sleep(5 * time.Millisecond)
	}
	if d.pid1 == 0 {
		t.Fatal("no PID 1 process found")
	}
	return d
}

func allReady(s *status) bool {
	if len(s.Children) != len(childNames) {
		return false
	}
	for _, c := range s.Children {
		if c.Status != "ready" {
			return false
		}
	}
	return true
}

func (d *dev) status() *status {
	b, err := os.ReadFile(filepath.Join(d.state, "run", "children.json"))
	if err != nil {
		return &status{}
	}
	var s status
	if json.Unmarshal(b, &s) != nil {
		return &status{}
	}
	return &s
}

// waitAll polls children.json until cond holds.
func (d *dev) waitAll(cond func(*status) bool, timeout time.Duration, what string) *status {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := d.status()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out waiting for %s; status %+v", what, s)
		}
		select {
		case err := <-d.done:
			d.done <- err
			d.t.Fatalf("supervisor exited (%v) while waiting for %s", err, what)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitLog polls the supervisor's output until a line has every one of
// parts. The output comes through PID 1 and a pipe: a line logged before
// children.json was written may still be on its way when the file shows
// its effect.
func (d *dev) waitLog(timeout time.Duration, what string, parts ...string) {
	d.t.Helper()
	testutil.WaitUntil(d.t, timeout, what+" in the supervisor's log", func() bool { return logHas(d.out.String(), parts...) })
}

// stop sends SIGTERM and waits; it reports how long the exit took.
func (d *dev) stop(timeout time.Duration) (time.Duration, error) {
	if d.cmd.ProcessState != nil {
		return 0, nil
	}
	t0 := time.Now()
	d.cmd.Process.Signal(unix.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		return time.Since(t0), err
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		err := <-d.done
		d.done <- err
		return time.Since(t0), fmt.Errorf("did not stop within %v", timeout)
	}
}

// procStatus returns the fields of /proc/PID/status.
func procStatus(pid int) map[string]string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func allPids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func childOf(ppid int) int {
	for _, pid := range allPids() {
		if procStatus(pid)["PPid"] == strconv.Itoa(ppid) {
			return pid
		}
	}
	return 0
}

// inNS lists the host pids of PID 1 and every process below it (orphans
// in the namespace are re-parented to PID 1, so this is the namespace).
func (d *dev) inNS() []int {
	var out []int
	for _, pid := range allPids() {
		for p, n := pid, 0; p > 1 && n < 64; n++ {
			if p == d.pid1 {
				out = append(out, pid)
				break
			}
			p, _ = strconv.Atoi(procStatus(p)["PPid"])
		}
	}
	return out
}

// hostPid maps a pid of the supervisor's namespace to the host's.
func (d *dev) hostPid(nsPid int) int {
	for _, pid := range d.inNS() {
		f := strings.Fields(procStatus(pid)["NSpid"])
		if len(f) >= 2 && f[1] == strconv.Itoa(nsPid) {
			return pid
		}
	}
	return 0
}

// probe runs `cvmd probe in ARGS` inside the sandbox of child's current
// incarnation and returns its output.
func (d *dev) probe(child string, args ...string) string {
	d.t.Helper()
	cmdArgs := append([]string{"-t", strconv.Itoa(d.pid1), "-p", "-m", "--", d.bin, "probe", "exec",
		filepath.Join(d.state, "run", "sandbox", "containers"), d.sandbox(child)}, args...)
	out, err := exec.Command("nsenter", cmdArgs...).CombinedOutput()
	if err != nil {
		d.t.Fatalf("probe in %s: %v\n%s", child, err, out)
	}
	return string(out)
}

// sandbox is the id of the sandbox of child's current incarnation.
func (d *dev) sandbox(child string) string {
	d.t.Helper()
	id := d.status().child(child).Sandbox
	if id == "" {
		d.t.Fatalf("%s has no sandbox in children.json", child)
	}
	return id
}

// results parses "name:value" lines.
func results(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = v
		}
	}
	return m
}
