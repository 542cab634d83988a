package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/internal/testutil"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		Init()
	}
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		os.Exit(probe(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// probe runs inside a sandbox and prints what it finds.
func probe(args []string) int {
	switch args[0] {
	case "status":
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Seccomp:") || strings.HasPrefix(l, "CapEff:") || strings.HasPrefix(l, "NoNewPrivs:") {
				fmt.Println(l)
			}
		}
		f := os.NewFile(3, "fd3")
		buf := make([]byte, 16)
		n, _ := f.Read(buf)
		fmt.Printf("fd3:%s\n", buf[:n])
	case "syscalls":
		try := func(name string, err error) { fmt.Printf("%s:%v\n", name, err) }
		try("mount", unix.Mount("tmpfs", "/tmp", "tmpfs", 0, ""))
		try("unshare", unix.Unshare(unix.CLONE_NEWUSER))
		_, _, e := unix.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		try("ptrace", errnoErr(e))
		_, _, e = unix.Syscall(unix.SYS_BPF, 0, 0, 0)
		try("bpf", errnoErr(e))
		_, _, e = unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0)
		try("kexec_load", errnoErr(e))
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		try("socket", err)
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
		try("socketpair", err)
		err = os.WriteFile("/etc/cvmd-probe", []byte("x"), 0o600)
		try("write-root", err)
		try("write-tmp", os.WriteFile("/tmp/x", []byte("x"), 0o600))
	case "families":
		probeFamilies()
	case "hog":
		var keep [][]byte
		for i := 0; i < 1024; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		fmt.Println(len(keep))
	}
	return 0
}

func hasLine(out, prefix, sub string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func newRuntime(t *testing.T) *Runtime {
	t.Helper()
	rt, err := NewRuntime(RuntimeConfig{StateDir: t.TempDir(), CgroupRoot: fmt.Sprintf("cvmd-sbtest-%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rt.Close(); err != nil {
			t.Error(err)
		}
		dirs, _ := CgroupDirs(rt.cfg.CgroupRoot)
		for _, d := range dirs {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left behind", d)
			}
		}
	})
	return rt
}

// testSpec runs the (dynamically linked) test binary: it needs the host's
// libraries, bound read-only.
func testSpec(id string, args ...string) *Spec {
	s := &Spec{ID: id, Args: append([]string{"/proc/self/exe"}, args...), Mounts: []Mount{{Kind: Tmpfs, Dest: "/tmp"}}}
	for _, d := range []string{"/lib", "/lib64", "/usr", "/etc"} {
		if _, err := os.Stat(d); err == nil {
			s.Mounts = append(s.Mounts, Mount{Kind: Bind, Source: d, Dest: d, Exec: true})
		}
	}
	return s
}

func run(t *testing.T, rt *Runtime, s *Spec, extra ...*os.File) (string, *os.ProcessState, bool) {
	t.Helper()
	var out bytes.Buffer
	sb, err := rt.Start(s, IO{Stdout: &out, Stderr: &out, ExtraFiles: extra})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sb.Wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	oom := sb.OOMKilled()
	if err := sb.Destroy(); err != nil {
		t.Errorf("destroy: %v", err)
	}
	return out.String(), st, oom
}

func TestSandboxSeccompCapsAndFD(t *testing.T) {
	requireRoot(t)
	rt := newRuntime(t)
	r, w, _ := os.Pipe()
	w.Write([]byte("ping"))
	w.Close()
	defer r.Close()
	out, _, _ := run(t, rt, testSpec("status", "probe", "status"), r)
	for _, want := range []string{"Seccomp:\t2", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "fd3:ping"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestSandboxDeniedSyscalls(t *testing.T) {
	requireRoot(t)
	rt := newRuntime(t)
	for _, tc := range []struct {
		name string
		prof *Profile
		want map[string]string
	}{
		{"fd-only", FDOnlyProfile(), map[string]string{"mount": "operation not permitted", "unshare": "operation not permitted",
			"ptrace": "operation not permitted", "bpf": "operation not permitted", "kexec_load": "operation not permitted",
			"socket": "operation not permitted", "socketpair": "<nil>", "write-root": "read-only file system", "write-tmp": "<nil>"}},
		{"net", NetworkProfile(), map[string]string{"socket": "<nil>", "mount": "operation not permitted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec("sys-"+tc.name, "probe", "syscalls")
			s.Seccomp = tc.prof
			out, _, _ := run(t, rt, s)
			for k, v := range tc.want {
				if !hasLine(out, k+":", v) {
					t.Errorf("%s: want %q in:\n%s", k, v, out)
				}
			}
		})
	}
}

func TestSandboxOOM(t *testing.T) {
	requireRoot(t)
	rt := newRuntime(t)
	s := testSpec("hog", "probe", "hog")
	s.Limits.MemoryBytes = 64 << 20
	_, st, oom := run(t, rt, s)
	if st.Success() || !oom {
		t.Fatalf("hog: state %v, oom %v; want killed by the OOM killer", st, oom)
	}
}

func TestRuntimeCleansStale(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	root := fmt.Sprintf("cvmd-stale-%d", os.Getpid())
	rt, err := NewRuntime(RuntimeConfig{StateDir: dir, CgroupRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	s := testSpec("sleeper", "probe", "hog")
	s.Args = []string{"/usr/bin/sleep", "60"}
	sb, err := rt.Start(s, IO{})
	if err != nil {
		t.Fatal(err)
	}
	pid := sb.Pid()
	// A new Runtime over the same state (the old supervisor crashed) kills and removes it.
	rt2, err := NewRuntime(RuntimeConfig{StateDir: dir, CgroupRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	sb.Wait()
	deadline := time.Now().Add(2 * time.Second)
	for unix.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if unix.Kill(pid, 0) == nil {
		t.Errorf("stale sandbox process %d still alive", pid)
	}
	rt2.Close()
	dirs, _ := CgroupDirs(root)
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left", d)
		}
	}
}

// TestCreateThenExec: a created sandbox does not run its program until
// Exec, and then runs it with the full sandbox (seccomp included); a
// created sandbox that is never executed is killed and destroyed cleanly.
func TestCreateThenExec(t *testing.T) {
	requireRoot(t)
	rt := newRuntime(t)
	out := &testutil.Buffer{}
	sb, err := rt.Create(testSpec("created", "probe", "status"), IO{Stdout: out, Stderr: out})
	if err != nil {
		t.Fatal(err)
	}
	// Its process is libcontainer's init, waiting: the program has not run.
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sb.Pid()))
	if args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00"); err != nil || len(args) < 2 || args[1] != "init" {
		t.Fatalf("created sandbox runs %q (%v), want libcontainer's init", args, err)
	}
	if s := out.String(); s != "" {
		t.Fatalf("the program ran before Exec: %q", s)
	}
	if err := sb.Exec(); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Destroy(); err != nil {
		t.Error(err)
	}
	if s := out.String(); !strings.Contains(s, "Seccomp:\t2") || !strings.Contains(s, "NoNewPrivs:\t1") {
		t.Errorf("after Exec the program ran without its sandbox:\n%s", s)
	}

	idle, err := rt.Create(testSpec("never-run", "probe", "status"), IO{})
	if err != nil {
		t.Fatal(err)
	}
	idle.Kill()
	if _, err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Destroy(); err != nil {
		t.Error(err)
	}
}

// TestWaitTwice: the supervisor's loop and its clean-up (or the runtime's
// Close) may both wait for one sandbox; each gets the process's exit
// status, and neither steals it from the other.
func TestWaitTwice(t *testing.T) {
	requireRoot(t)
	rt := newRuntime(t)
	s := testSpec("waited-twice")
	s.Args = []string{"/usr/bin/sleep", "60"}
	sb, err := rt.Start(s, IO{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy()
	type result struct {
		st  *os.ProcessState
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			st, err := sb.Wait()
			results <- result{st, err}
		}()
	}
	if err := sb.Kill(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		r := <-results
		if r.err != nil || r.st == nil {
			t.Fatalf("Wait: state %v, err %v; want the process's status", r.st, r.err)
		}
		if ws, ok := r.st.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("Wait: %v, want killed by SIGKILL", r.st)
		}
	}
}

// TestNewRuntimeRefusedLeavesNoGoroutine: a Runtime that cannot be made
// (its state dir is a file) leaves none of its forkers behind.
func TestNewRuntimeRefusedLeavesNoGoroutine(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "containers"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	if _, err := NewRuntime(RuntimeConfig{StateDir: dir, CgroupRoot: fmt.Sprintf("cvmd-refused-%d", os.Getpid())}); err == nil {
		t.Fatal("NewRuntime accepted a state dir whose containers dir is a file")
	}
	// A leaked forker would be blocked for good: give goroutines that do end
	// a moment, then count.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines left after a refused NewRuntime (had %d):\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
