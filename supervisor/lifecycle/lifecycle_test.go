package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/sandbox"
	_ "github.com/cvmd/cvmd/supervisor/lifecycle/internal/staticlink"
	"github.com/cvmd/cvmd/supervisor/table"
)

// The lifecycle tests run a real Supervisor over real libcontainer
// sandboxes. This test binary is libcontainer's init and the children
// (TestMain, as cvmd's dispatch table): a child runs `/proc/self/exe NAME`,
// standIn under the real child runtime. The binary is linked statically
// (staticlink), so it runs in the children's empty sandboxes.

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		sandbox.Init() // libcontainer's re-exec; never returns
	}
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		os.Exit(testutil.ExitCode(child.Run(os.Args[1], standIn)))
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, cgroups)")
	}
}

// logLines returns the lines of log that contain every one of parts.
func logLines(log *testutil.Buffer, parts ...string) []string {
	var out []string
	for _, line := range log.Lines() {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// spec is a child of a test table: the stand-in in the given mode.
func spec(name, mode string, deps ...string) table.ChildSpec {
	return table.ChildSpec{
		Name: name, Deps: deps, Caps: []string{}, Seccomp: sandbox.FDOnlyProfile(), Scope: table.Always,
		Limits: sandbox.Limits{MemoryBytes: 64 << 20, Pids: 32}, TmpBytes: 1 << 20,
		Settings: func(in *table.SettingsInput) (proto.Message, error) {
			return wrapperspb.String(mode + ":" + in.Computation.GetId()), nil
		},
	}
}

var rigSeq atomic.Int32

// rig is one running Supervisor.
type rig struct {
	t      *testing.T
	sup    *Supervisor
	log    *testutil.Buffer
	cancel context.CancelFunc
	done   chan error
	ended  bool
}

// start runs a Supervisor over children (edges and extra config may be
// set by mod) until the test ends.
func start(t *testing.T, children []table.ChildSpec, mod func(*Config)) *rig {
	t.Helper()
	needRoot(t)
	rt, err := sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: filepath.Join(t.TempDir(), "sandbox"),
		CgroupRoot: fmt.Sprintf("cvmd-lifecycle-test-%d-%d", os.Getpid(), rigSeq.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	log := &testutil.Buffer{}
	cfg := Config{
		Table:   &table.Table{Children: children, Policy: table.DefaultPolicy(), ReadyTimeout: 20 * time.Second, StopGrace: time.Second},
		Runtime: rt,
		State:   t.TempDir(),
		RunDir:  t.TempDir(),
		Log:     slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	sup, err := New(cfg)
	if err != nil {
		rt.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &rig{t: t, sup: sup, log: log, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- sup.Run(ctx) }()
	t.Cleanup(func() {
		r.stop(30 * time.Second)
		if err := rt.Close(); err != nil {
			t.Errorf("closing the runtime: %v", err)
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", log.String())
		}
	})
	return r
}

// stop ends Run and checks that the loop made no move outside its state
// machine.
func (r *rig) stop(timeout time.Duration) {
	r.t.Helper()
	if r.ended {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		r.ended = true
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
	case <-time.After(timeout):
		r.t.Fatalf("Run did not return within %v of its context's end", timeout)
	}
	if r.sup.illegal != 0 {
		r.t.Errorf("%d status changes outside the state machine (see the log)", r.sup.illegal)
	}
}

// children asks the loop for the children's state.
func (r *rig) children(timeout time.Duration) (map[string]ChildInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	infos, err := r.sup.Children(ctx)
	m := map[string]ChildInfo{}
	for _, ci := range infos {
		m[ci.Name] = ci
	}
	return m, err
}

// waitFor polls the children's state until cond holds.
func (r *rig) waitFor(what string, timeout time.Duration, cond func(map[string]ChildInfo) bool) map[string]ChildInfo {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, err := r.children(5 * time.Second)
		if err == nil && cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s: %v (%v)", what, m, err)
		}
		select {
		case err := <-r.done:
			r.done <- err
			r.t.Fatalf("Run returned (%v) while waiting for %s", err, what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func allReady(m map[string]ChildInfo) bool {
	for _, c := range m {
		if c.Status != StatusReady {
			return false
		}
	}
	return len(m) > 0
}

// A boot starts every child once its dependency is READY, wired to its
// peer; a shutdown stops them in reverse dependency order and reports each
// as stopped, not as a failure.
func TestBootAndShutdown(t *testing.T) {
	r := start(t, []table.ChildSpec{spec("base", "ok"), spec("top", "ok", "base")}, func(c *Config) {
		c.Table.Edges = []table.Edge{{Client: "top", Server: "base"}}
	})
	r.waitFor("both children READY", 30*time.Second, allReady)
	r.stop(30 * time.Second)
	log := r.log
	stopped := logLines(log, "event_type=child.stopped", "status=ok")
	if len(stopped) != 2 {
		t.Errorf("%d child.stopped events, want 2:\n%s", len(stopped), strings.Join(stopped, "\n"))
	}
	if exited := logLines(log, "event_type=child.exited"); len(exited) != 0 {
		t.Errorf("a shutdown reported as failures:\n%s", strings.Join(exited, "\n"))
	}
	// top depends on base: it is stopped first, base after top exited.
	out := log.String()
	topStop, baseStop := strings.Index(out, `msg="child stopped" child=top`), strings.Index(out, `msg="child stopped" child=base`)
	if topStop < 0 || baseStop < 0 || baseStop < topStop {
		t.Errorf("stop order: top at %d, base at %d; want top first", topStop, baseStop)
	}
}

// The loop keeps serving calls while a child takes its whole grace to
// stop: nothing waits for a child on the loop (before, stopping a child
// blocked every caller of the loop for up to StopGrace plus 2 s).
func TestCallsServedWhileAChildStops(t *testing.T) {
	r := start(t, []table.ChildSpec{spec("stubborn", "stubborn")}, nil)
	r.waitFor("READY", 30*time.Second, allReady)
	r.cancel() // shutdown: stubborn ignores Stop and SIGTERM for its 1 s grace
	m := r.waitFor("stopping", 5*time.Second, func(m map[string]ChildInfo) bool { return m["stubborn"].Status == StatusStopping })
	t0 := time.Now()
	for time.Since(t0) < 500*time.Millisecond {
		if _, err := r.children(200 * time.Millisecond); err != nil {
			t.Fatalf("a call during the stop was not served: %v (status %v)", err, m)
		}
	}
	r.stop(30 * time.Second)
	if len(logLines(r.log, "child did not stop in time; killing it", "child=stubborn")) != 1 {
		t.Error("the stubborn child was not killed after its grace")
	}
}

// A new computation replaces the per-computation children on purpose: the
// manager hears child.replaced, not a child.exited error, and the new
// incarnation runs with the computation's id.
func TestReplacementIsReportedAsSuch(t *testing.T) {
	perComputation := spec("runner", "ok")
	perComputation.Scope = table.PerComputation
	r := start(t, []table.ChildSpec{spec("base", "ok"), perComputation}, nil)
	r.waitFor("READY", 30*time.Second, allReady)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.sup.NewComputation(ctx, &cvms.ComputationRunReq{Id: "c1"}); err != nil {
		t.Fatal(err)
	}
	m := r.waitFor("the replacement READY", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["runner"].Generation == 2 && m["runner"].Status == StatusReady
	})
	if m["base"].Generation != 1 {
		t.Errorf("base was restarted: %+v", m["base"])
	}
	if got := logLines(r.log, "event_type=child.replaced", "status=ok", `\"child\":\"runner\"`); len(got) != 1 {
		t.Errorf("%d child.replaced events for the runner, want 1", len(got))
	}
	if got := logLines(r.log, "event_type=child.exited"); len(got) != 0 {
		t.Errorf("the replacement reported as a failure:\n%s", strings.Join(got, "\n"))
	}
	if len(logLines(r.log, "child output", "mode ok generation 2 computation c1")) != 1 {
		t.Error("the new runner did not get the computation id")
	}
}

// recordingSandboxes stands in for the algorithm sandboxes (our own
// interface, not libcontainer): it refuses every request, naming it.
type recordingSandboxes struct {
	mu       sync.Mutex
	requests []uint64
	killAll  int
}

func (r *recordingSandboxes) Request(_ context.Context, req *control.SandboxRequest) (map[string]*os.File, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, req.GetId())
	return nil, "", fmt.Errorf("recording: request %d seen", req.GetId())
}

func (r *recordingSandboxes) Kill(uint64) {}

func (r *recordingSandboxes) KillAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.killAll++
}

func (r *recordingSandboxes) Close() error { return nil }

// Only the child with the algorithm-sandboxes role may ask for sandboxes;
// its sandboxes are killed when it exits.
func TestOnlyTheSandboxRoleAsksForSandboxes(t *testing.T) {
	runner := spec("runner", "asksandbox")
	runner.Role = table.RoleAlgorithmSandboxes
	sbs := &recordingSandboxes{}
	r := start(t, []table.ChildSpec{runner, spec("other", "asksandbox")}, func(c *Config) { c.Sandboxes = sbs })
	r.waitFor("READY", 30*time.Second, allReady)
	testutil.WaitUntil(t, 20*time.Second, "both children's sandbox replies", func() bool {
		return len(logLines(r.log, "child output", "sandbox reply:")) >= 2
	})
	if got := logLines(r.log, "child=other", "sandbox reply: supervisor: other may not ask for algorithm sandboxes"); len(got) != 1 {
		t.Errorf("the other child's request was not refused as such")
	}
	if got := logLines(r.log, "child=runner", "sandbox reply: recording: request 1 seen"); len(got) != 1 {
		t.Errorf("the runner's request did not reach the sandboxes")
	}
	r.stop(30 * time.Second)
	sbs.mu.Lock()
	defer sbs.mu.Unlock()
	if len(sbs.requests) != 1 || sbs.killAll != 1 {
		t.Errorf("sandboxes saw requests %v and %d KillAll, want [1] and 1 (when the runner stopped)", sbs.requests, sbs.killAll)
	}
}

// Every transition the loop makes is in the table, and the table is
// complete enough to say what each status is for.
func TestTransitionsNameEveryStatus(t *testing.T) {
	seen := map[Status]bool{}
	for _, tr := range transitions {
		seen[tr.to] = true
		for _, f := range tr.from {
			seen[f] = true
		}
		if tr.on == "" {
			t.Errorf("transition to %s says nothing about why", tr.to)
		}
	}
	for _, st := range []Status{StatusPending, StatusBuilding, StatusCreated, StatusStarting, StatusReady,
		StatusStopping, StatusBackoff, StatusFailed, StatusStopped} {
		if !seen[st] {
			t.Errorf("status %s is in no transition", st)
		}
	}
	if allowed(StatusStopped, StatusPending) || allowed(StatusReady, StatusCreated) {
		t.Error("the state machine allows a move it must not")
	}
}

// A new computation that comes while the children are still being built
// replaces the per-computation client at once; its new incarnation reaches
// its server, whose sandbox may still be on its way (an end made for a
// child being built is sent after its Hello, not dropped).
func TestReplacedDuringBootReachesItsServer(t *testing.T) {
	for i := range 3 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			cli := spec("cli", "dial", "srv")
			cli.Scope = table.PerComputation
			r := start(t, []table.ChildSpec{spec("srv", "ok"), cli}, func(c *Config) {
				c.Table.Edges = []table.Edge{{Client: "cli", Server: "srv"}}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := r.sup.NewComputation(ctx, &cvms.ComputationRunReq{Id: "c1"}); err != nil {
				t.Fatal(err)
			}
			r.waitFor("the new client READY", 30*time.Second, func(m map[string]ChildInfo) bool {
				return m["cli"].Generation >= 2 && m["cli"].Status == StatusReady
			})
			testutil.WaitUntil(t, 25*time.Second, "the replaced client's dial", func() bool {
				return len(logLines(r.log, "child=cli", "srv generation 2")) > 0 || len(logLines(r.log, "child=cli", "unreachable srv")) > 0
			})
			if bad := logLines(r.log, "child=cli", "unreachable srv"); len(bad) > 0 || len(logLines(r.log, "child=cli", "reached srv generation 2")) != 1 {
				t.Fatalf("the replaced client did not reach its server: %v", bad)
			}
		})
	}
}

// A child whose death after SIGKILL is seen only after the kill margin
// (a loaded machine: the VM's runner, killed while created, took longer
// than 2 s to be reaped) is abandoned, and its replacement starts beside
// it: it is never refused because the old sandbox is still there. When the
// old one's exit does come, its sandbox is destroyed. A margin of 1 ns
// makes every death late. Both ways of being killed are covered: while
// created (its dependency never READY), and after the grace of a stop it
// ignored.
func TestReplacementOfAChildThatDiesLate(t *testing.T) {
	for _, tc := range []struct {
		name, base, mode string
		created          bool
	}{
		{"created", "silent", "ok", true},
		{"stubborn", "ok", "stubborn", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runner := spec("runner", tc.mode, "base")
			runner.Scope = table.PerComputation
			r := start(t, []table.ChildSpec{spec("base", tc.base), runner}, func(c *Config) {
				c.KillMargin = time.Nanosecond
				c.Table.ReadyTimeout = 5 * time.Minute // base may stay silent
			})
			want := StatusReady
			if tc.created {
				want = StatusCreated
			}
			r.waitFor("the runner "+string(want), 60*time.Second, func(m map[string]ChildInfo) bool {
				return m["runner"].Generation == 1 && m["runner"].Status == want
			})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := r.sup.NewComputation(ctx, &cvms.ComputationRunReq{Id: "c1"}); err != nil {
				t.Fatal(err)
			}
			r.waitFor("the new runner "+string(want), 60*time.Second, func(m map[string]ChildInfo) bool {
				return m["runner"].Generation == 2 && m["runner"].Status == want
			})
			testutil.WaitUntil(t, 60*time.Second, "the abandoned runner's late exit", func() bool {
				return len(logLines(r.log, "abandoned child exited", "child=runner", "generation=1")) == 1
			})
			if bad := logLines(r.log, "starting child", "child=runner"); len(bad) != 0 {
				t.Fatalf("the replacement was refused:\n%s", strings.Join(bad, "\n"))
			}
			if got := logLines(r.log, "child did not die after SIGKILL", "child=runner", "generation=1"); len(got) != 1 {
				t.Fatalf("%d abandon lines for the first runner, want 1 (the margin did not force a late death?)", len(got))
			}
			if ids := r.sup.rt.Live(); slices.Contains(ids, "runner") || !slices.Contains(ids, "runner-2") {
				t.Fatalf("live sandboxes %v: want the second runner's, not the first's", ids)
			}
		})
	}
}
