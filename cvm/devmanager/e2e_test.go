package devmanager_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/cvms"
)

// binaries returns the directory holding cvmd and cvm: $CVMD_BIN, or both
// built into a temp dir.
func binaries(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("CVMD_BIN"); d != "" {
		return d
	}
	dir := t.TempDir()
	build := func(args ...string) {
		cmd := exec.Command("go", args...)
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}
	build("build", "-tags", "seccomp netgo osusergo grpcnotrace", "-ldflags", `-linkmode external -extldflags "-static"`, "-o", filepath.Join(dir, "cvmd"), "./cmd/cvmd")
	// The test build (make cvmd-test): --test-misbehave and the other test switches.
	build("build", "-tags", "seccomp netgo osusergo grpcnotrace cvmdtest", "-ldflags", `-linkmode external -extldflags "-static"`, "-o", filepath.Join(dir, "cvmd-test"), "./cmd/cvmd")
	build("build", "-o", filepath.Join(dir, "cvm"), "./cmd/cvm")
	return dir
}

func repoRoot() string {
	// The module root: the nearest directory upwards that holds go.mod.
	dir, _ := os.Getwd()
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return dir
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// guest is one `cvmd supervise --dev` with the sample computation's files,
// and the development managers it talked to.
type guest struct {
	t                  *testing.T
	bin, work          string
	agentAddr, mgrAddr string
	algo, data, priv   string
	req                *cvms.ComputationRunReq
	managers           []*devmanager.Server
	cvmdName           string // the binary in bin: "cvmd", or "cvmd-test" for test switches
	stopMgr            func()
	ctx                context.Context
	cvmdPid            int // the `cvmd supervise` process, once started
}

func newGuest(t *testing.T) *guest {
	if testing.Short() {
		t.Skip("boots cvmd")
	}
	if os.Geteuid() != 0 {
		t.Skip("cvmd --dev needs root")
	}
	g := &guest{t: t, bin: binaries(t), work: t.TempDir(), agentAddr: freePort(t), mgrAddr: freePort(t), cvmdName: "cvmd"}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	g.ctx = ctx
	if out, err := g.cvm("keys", "-k", "ecdsa", "--dir", g.work); err != nil {
		t.Fatalf("cvm keys: %v\n%s", err, out)
	}
	g.priv = filepath.Join(g.work, "private.pem")
	g.algo = filepath.Join(g.work, "algo")
	b := exec.Command("go", "build", "-trimpath", "-o", g.algo, "./examples/iris/algo")
	b.Dir, b.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("building the sample algorithm: %v\n%s", err, out)
	}
	g.data = filepath.Join(g.work, "iris.csv")
	csv, err := os.ReadFile(filepath.Join(repoRoot(), "examples/iris/iris.csv"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(g.data, csv, 0o644)
	g.req, err = devmanager.Spec{ID: "e2e-1", Name: "iris", Algorithm: g.algo, AlgoType: "bin", Datasets: []string{g.data},
		PublicKey: filepath.Join(g.work, "public.pem")}.Build()
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *guest) cvm(args ...string) (string, error) {
	cmd := exec.CommandContext(g.ctx, filepath.Join(g.bin, "cvm"), args...)
	cmd.Dir = g.work
	cmd.Env = append(os.Environ(), "AGENT_GRPC_URL="+g.agentAddr)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// retry runs cvm until it succeeds (the agent's listener may not be up yet).
func (g *guest) retry(args ...string) {
	g.t.Helper()
	var out string
	var err error
	for i := 0; i < 150; i++ {
		if out, err = g.cvm(args...); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.t.Fatalf("cvm %v: %v\n%s", args, err, out)
}

// startManager serves a new development manager on the fixed address.
func (g *guest) startManager(sendRun bool) *devmanager.Server {
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", g.mgrAddr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		g.t.Fatal(err)
	}
	opts := devmanager.Options{ChunkSize: 64 << 10}
	if sendRun {
		opts.Computation = g.req
	}
	srv := devmanager.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { devmanager.Serve(ctx, ln, srv, nil); close(served) }()
	g.stopMgr = func() { cancel(); <-served }
	g.t.Cleanup(g.stopMgr)
	g.managers = append(g.managers, srv)
	return srv
}

// startCvmd starts `cvmd supervise --dev` pointed at the manager address,
// with simulated attestation; see startCvmdEnv.
func (g *guest) startCvmd() { g.startCvmdEnv("") }

func has(pred func(devmanager.Received) bool) func([]devmanager.Received) bool {
	return func(ms []devmanager.Received) bool {
		for _, m := range ms {
			if pred(m) {
				return true
			}
		}
		return false
	}
}

func (g *guest) waitRunRes(srv *devmanager.Server) {
	g.t.Helper()
	if err := srv.Wait(g.ctx, has(func(m devmanager.Received) bool { return m.Msg.GetRunRes() != nil })); err != nil {
		g.t.Fatal("no run response from the guest")
	}
	for _, m := range srv.Messages() {
		if rr := m.Msg.GetRunRes(); rr != nil && rr.GetError() != "" {
			g.t.Fatalf("guest refused the computation: %s", rr.GetError())
		}
	}
}

// result downloads and returns result.txt (plaintext to the ingress).
func (g *guest) result() string { return g.resultEnv(nil) }

// events returns originator/type/status of every event the managers saw on
// log streams, and how many were duplicates (same event, same timestamp).
func (g *guest) events() (map[string]bool, int) {
	seen := map[string]bool{}
	exact := map[string]bool{}
	dups := 0
	for _, srv := range g.managers {
		for _, m := range srv.Messages() {
			e := m.Msg.GetAgentEvent()
			if e == nil {
				continue
			}
			if m.Stream != "log" {
				g.t.Fatalf("event on the %s stream: %v", m.Stream, e)
			}
			k := e.GetOriginator() + "/" + e.GetEventType() + "/" + e.GetStatus()
			x := k + "@" + e.GetTimestamp().AsTime().String() + string(e.GetDetails())
			if exact[x] {
				dups++
			}
			exact[x] = true
			seen[k] = true
		}
	}
	return seen, dups
}

func (g *guest) stop(srv *devmanager.Server) {
	g.t.Helper()
	if err := srv.Command("stop e2e-1"); err != nil {
		g.t.Fatal(err)
	}
	if err := srv.Wait(g.ctx, has(func(m devmanager.Received) bool { return m.Msg.GetStopComputationRes() != nil })); err != nil {
		g.t.Fatal("no stop response")
	}
}

var runEvents = []string{"agent/ReceivingAlgorithm/InProgress", "agent/ReceivingData/InProgress", "agent/Running/Completed",
	"computation-runner/AlgorithmRun/Completed", "agent/ConsumingResults/Ready", "agent/Complete/Completed", "agent/Stopped/Stopped",
	"supervisor/computation.started/ok", "supervisor/child.ready/ok"}

// TestE2ESampleComputation is `make run` as a test: the development manager
// (only our protos) sends the sample computation chunked, as Cocos's
// manager does, to a real `cvmd supervise --dev`; the real `cvm` uploads
// the algorithm and dataset and downloads the result; the manager sees the
// run response, the events and the logs on the stream marked log-forwarder,
// then stops the computation. With CVMD_BENCH=1 it prints BENCH run_e2e_ms:
// from the computation sent to results.zip downloaded.
func TestE2ESampleComputation(t *testing.T) {
	g := newGuest(t)
	srv := g.startManager(true)
	g.startCvmd()
	g.waitRunRes(srv)
	t0 := srv.RunSentAt()
	g.retry("algo", g.algo, g.priv, "-a", "bin")
	g.retry("data", g.data, g.priv)
	result := g.result()
	elapsed := time.Since(t0)
	if !strings.HasPrefix(result, "accuracy 0.9") {
		t.Fatalf("result.txt = %q, want an accuracy ≥ 0.9", result)
	}
	g.stop(srv)
	for _, w := range runEvents {
		if err := srv.Wait(g.ctx, func([]devmanager.Received) bool { seen, _ := g.events(); return seen[w] }); err != nil {
			t.Fatalf("event %s never reached the manager", w)
		}
	}
	for _, m := range srv.Messages() {
		if m.Stream == "control" && m.Msg.GetAgentLog() != nil {
			t.Fatalf("log record on the control stream: %v", m.Msg)
		}
		if m.JobID != "e2e" {
			t.Fatalf("%s stream without job-id e2e", m.Stream)
		}
	}
	t.Logf("sample computation: sent → results.zip in %s; result %q", elapsed, strings.TrimSpace(result))
	if testutil.Benchmarking() {
		testutil.Bench("run_e2e_ms", float64(elapsed.Microseconds())/1000, "ms")
	}
}

// TestE2EManagerDownAtBootRestartedMidComputation: cvmd boots with no
// manager; the manager comes up later and sends the computation; after the
// algorithm upload it is killed and a new one takes its place (the
// computation goes on), and the new one stops it. Every event of the run
// reaches one of the managers; duplicates are counted.
func TestE2EManagerDownAtBootRestartedMidComputation(t *testing.T) {
	g := newGuest(t)
	g.startCvmd()
	// The guest tried the absent manager and will retry.
	g.waitLog(`msg="manager link down"`)
	first := g.startManager(true)
	g.waitRunRes(first)
	g.retry("algo", g.algo, g.priv, "-a", "bin")
	g.stopMgr()
	second := g.startManager(false)
	g.retry("data", g.data, g.priv)
	if r := g.result(); !strings.HasPrefix(r, "accuracy 0.9") {
		t.Fatalf("result.txt = %q", r)
	}
	if err := second.Wait(g.ctx, has(func(m devmanager.Received) bool { return m.Msg.GetVTPMattestationReport() != nil })); err != nil {
		t.Fatal("the guest did not reconnect to the new manager")
	}
	g.stop(second)
	for _, w := range runEvents {
		if err := second.Wait(g.ctx, func([]devmanager.Received) bool { seen, _ := g.events(); return seen[w] }); err != nil {
			seen, _ := g.events()
			t.Fatalf("event %s reached neither manager (seen %v)", w, seen)
		}
	}
	_, dups := g.events()
	t.Logf("events across a manager absent at boot and restarted mid-computation: all arrived, %d duplicates (at-least-once)", dups)
}

// waitLog polls the supervisor's log until it has a line containing s.
func (g *guest) waitLog(s string) {
	g.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(filepath.Join(g.work, "supervisor.log")); strings.Contains(string(b), s) {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling the file, bounded by deadline
	}
	g.t.Fatalf("the supervisor never logged %q", s)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestBenchRunE2E is the benchmark entry `make bench` selects (^TestBench).
func TestBenchRunE2E(t *testing.T) {
	testutil.BenchOn(t)
	TestE2ESampleComputation(t)
}
