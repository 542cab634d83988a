package runner_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opencontainers/runc/libcontainer/exeseal"

	"github.com/cvmd/cvmd/children/runner"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
	pb "github.com/cvmd/cvmd/proto/runner"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/algosandbox"

	// libcontainer's re-exec of this test binary as `init`.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

var binDir string // test algorithms built once, removed by TestMain

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		sandbox.Init()
	}
	if len(os.Args) > 1 && os.Args[1] == "runner-child" {
		runnerChildMain()
	}
	// runc joins each new container's mount namespace on a locked thread it
	// then lets die; on the main thread Go cannot end it and parks it for
	// good, pinning that namespace (and its mounts) for the process's life.
	// Keeping the main goroutine on the main thread prevents that.
	runtime.LockOSThread()
	if os.Geteuid() != 0 {
		fmt.Println("tests/runner: skipped, needs root (sandboxes, cgroups, mounts)")
		os.Exit(0)
	}
	// Run from a sealed memfd copy of this binary, as the supervisor does:
	// libcontainer then needs no copy of the (large) test binary per spawn,
	// and the figures measure what the supervisor pays.
	if !exeseal.IsSelfExeCloned() {
		if self, err := os.Open("/proc/self/exe"); err == nil {
			if st, err := self.Stat(); err == nil {
				if sealed, err := exeseal.CloneBinary(self, st.Size(), "/proc/self/exe", os.TempDir()); err == nil {
					unix.Exec(fmt.Sprintf("/proc/self/fd/%d", sealed.Fd()), os.Args, os.Environ())
				}
			}
		}
	}
	dir, err := os.MkdirTemp("", "cvmd-runner-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// testBinary builds ./testdata/<name> once (static, or for wasip1).
func testBinary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	out := filepath.Join(binDir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./testdata/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if name == "wasmcount" {
		out += ".wasm"
		cmd.Args[4] = out
		cmd.Env = append(cmd.Env, "GOOS=wasip1", "GOARCH=wasm")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building testdata/%s: %v\n%s", name, err, b)
	}
	built[name] = out
	return out
}

// cvmdForWasm returns the binary behind the logical source "cvmd": the real
// cvmd when CVMD_BIN is set, else testdata/wasmhost (the same wasmrun package).
func cvmdForWasm(t testing.TB) string {
	if d := os.Getenv("CVMD_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "cvmd")); err == nil {
			return filepath.Join(d, "cvmd")
		}
	}
	return testBinary(t, "wasmhost")
}

// records captures log records and events.
type records struct {
	mu     sync.Mutex
	lines  []string // "<LEVEL> <stream> <msg>"
	events []string // "<type>/<status> <details>"
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	stream := ""
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "stream" {
			stream = a.Value.String()
		}
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, fmt.Sprintf("%s %s %s", rec.Level, stream, rec.Message))
	r.mu.Unlock()
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }
func (r *records) Event(eventType, status string, details ...any) bool {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf("%s/%s %v", eventType, status, details))
	r.mu.Unlock()
	return true
}

// output returns the algorithm's lines of one stream.
func (r *records) output(stream string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines {
		_, rest, _ := strings.Cut(l, " ")
		if s, msg, ok := strings.Cut(rest, " "); ok && s == stream {
			out = append(out, msg)
		}
	}
	return out
}

func (r *records) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

func (r *records) has(stream, substr string) bool {
	for _, l := range r.output(stream) {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// world is one runner wired to one supervisor handler over a real control
// channel (SOCK_SEQPACKET, fds passed with SCM_RIGHTS), in this process.
type world struct {
	state, comp, work string
	algo              *algosandbox.Sandboxes
	svc               *runner.Service
	rec               *records
	supLog            testutil.Buffer // the handler's own log
	cgroupRoot        string
}

type worldOpts struct {
	max      algosandbox.Limits
	settings *config.RunnerSettings
	proxy    func(edge string, ln *os.File) error
}

var worldSeq atomic.Int64

func newWorld(t testing.TB, o worldOpts) *world {
	t.Helper()
	w := &world{state: t.TempDir(), rec: &records{}}
	os.Chmod(w.state, 0o755)
	w.comp = filepath.Join(w.state, "computation")
	w.work = filepath.Join(w.state, "runner")
	for _, d := range []string{w.comp, w.work, filepath.Join(w.comp, "datasets"), filepath.Join(w.comp, "results")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The agent's own state, which no algorithm may see.
	os.MkdirAll(filepath.Join(w.state, "agent"), 0o700)
	os.WriteFile(filepath.Join(w.state, "agent", "secret"), []byte("agent-secret"), 0o600)
	w.cgroupRoot = fmt.Sprintf("cvmd-test-runner-%d-%d", os.Getpid(), worldSeq.Add(1))
	rt, err := sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: filepath.Join(w.state, "sandboxes"), CgroupRoot: w.cgroupRoot})
	if err != nil {
		t.Fatal(err)
	}
	w.algo, err = algosandbox.New(algosandbox.Config{
		Runtime: rt, ComputationDir: w.comp, WorkDir: w.work, RunDir: filepath.Join(w.state, "run"),
		Cvmd: cvmdForWasm(t), Max: o.max, Proxy: o.proxy, Log: slog.New(slog.NewTextHandler(&w.supLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runSide, supSide, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	runCtl, supCtl := ipc.NewControl(runSide), ipc.NewControl(supSide)
	w.svc, err = runner.New(runner.Config{
		WorkDir: w.work, ComputationDir: w.comp, Settings: o.settings,
		Send: runCtl.Send, Log: slog.New(w.rec), Events: w.rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { // the runner's control loop (child.Env's, in short)
		for {
			msg, files, err := runCtl.Recv()
			if err != nil {
				return
			}
			if !w.svc.HandleControl(msg, files) {
				for _, f := range files {
					f.Close()
				}
			}
		}
	})
	wg.Go(func() { // the supervisor's routing of the runner's messages (as supervisor/lifecycle/launch.go)
		var reqs sync.WaitGroup
		defer reqs.Wait()
		for {
			msg, files, err := supCtl.Recv()
			if err != nil {
				// The runner's channel closed: as the supervisor does when the runner dies.
				w.algo.KillAll()
				return
			}
			for _, f := range files {
				f.Close()
			}
			switch b := msg.GetBody().(type) {
			case *control.Message_SandboxRequest:
				reqs.Go(func() {
					reply := &control.SandboxReply{Id: b.SandboxRequest.GetId()}
					files, _, err := w.algo.Request(context.Background(), b.SandboxRequest)
					if err != nil {
						reply.Error = err.Error()
					}
					if err := supCtl.Send(&control.Message{Body: &control.Message_SandboxReply{SandboxReply: reply}}, files); err != nil {
						w.algo.Kill(b.SandboxRequest.GetId())
					}
					for _, f := range files {
						f.Close()
					}
				})
			case *control.Message_SandboxKill:
				w.algo.Kill(b.SandboxKill.GetId())
			}
		}
	})
	t.Cleanup(func() {
		w.svc.StopAll("test over")
		runCtl.Close()
		supCtl.Close()
		wg.Wait()
		w.algo.Close()
		rt.Close()
		if n := w.algo.Live(); n != 0 {
			t.Errorf("%d sandboxes still live after Close", n)
		}
		for _, d := range cgroupDirs(w.cgroupRoot) {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left behind", d)
			}
		}
		// Nothing mounted under the state dir may remain.
		b, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, w.state) {
				t.Errorf("mount left: %s", l)
			}
		}
	})
	return w
}

// cgroupDirs lists where the runtime's cgroups would be (v1 and v2).
func cgroupDirs(root string) []string {
	dirs, _ := sandbox.CgroupDirs(root)
	return dirs
}

// put writes a computation file as the agent would.
func (w *world) put(t testing.TB, rel string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(w.comp, rel)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

func (w *world) putFile(t testing.TB, rel, src string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	w.put(t, rel, b, mode)
}

func (w *world) run(t testing.TB, algoType string, args ...string) *pb.RunResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	resp, err := w.svc.Run(ctx, &pb.RunRequest{ComputationId: "c1", AlgoType: algoType, AlgorithmPath: "algo", Args: args})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return resp
}

func (w *world) result(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.comp, "results", name))
	if err != nil {
		t.Fatalf("result %s: %v\nlogs:\n%s", name, err, w.rec.all())
	}
	return strings.TrimSpace(string(b))
}

func (r *records) reset() {
	r.mu.Lock()
	r.lines, r.events = nil, nil
	r.mu.Unlock()
}
