package devmanager_test

import (
	"archive/zip"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvmd/cvmd/devmanager"
)

// binaries returns the directory holding cvmd and cvm: $CVMD_BIN, or both
// built into a temp dir.
func binaries(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("CVMD_BIN"); d != "" {
		return d
	}
	dir := t.TempDir()
	root := repoRoot(t)
	build := func(args ...string) {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}
	build("build", "-tags", "seccomp netgo osusergo", "-ldflags", `-linkmode external -extldflags "-static"`, "-o", filepath.Join(dir, "cvmd"), "./cmd/cvmd")
	build("build", "-o", filepath.Join(dir, "cvm"), "./cmd/cvm")
	return dir
}

func repoRoot(t *testing.T) string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestE2ESampleComputation is `make run` as a test: the development manager
// (only our protos) sends the sample computation chunked, as Cocos's
// manager does, to a real `cvmd supervise --dev`; the real `cvm` uploads
// the algorithm and dataset and downloads the result; the manager sees the
// run response, the events and the logs on the stream marked log-forwarder,
// then stops the computation. With CVMD_BENCH=1 it prints BENCH run_e2e_ms:
// from the computation sent to results.zip downloaded.
func TestE2ESampleComputation(t *testing.T) {
	if testing.Short() {
		t.Skip("boots cvmd")
	}
	if os.Geteuid() != 0 {
		t.Skip("cvmd --dev needs root")
	}
	bin := binaries(t)
	work := t.TempDir()
	agentAddr := freePort(t)
	cvm := func(ctx context.Context, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "cvm"), args...)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "AGENT_GRPC_URL="+agentAddr)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if out, err := cvm(ctx, "keys", "-k", "ecdsa", "--dir", work); err != nil {
		t.Fatalf("cvm keys: %v\n%s", err, out)
	}
	algo := filepath.Join(work, "algo")
	b := exec.Command("go", "build", "-trimpath", "-o", algo, "./examples/iris/algo")
	b.Dir, b.Env = repoRoot(t), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("building the sample algorithm: %v\n%s", err, out)
	}
	data := filepath.Join(work, "iris.csv")
	csv, err := os.ReadFile(filepath.Join(repoRoot(t), "examples/iris/iris.csv"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(data, csv, 0o644)
	req, err := devmanager.Spec{ID: "e2e-1", Name: "iris", Algorithm: algo, AlgoType: "bin", Datasets: []string{data},
		PublicKey: filepath.Join(work, "public.pem")}.Build()
	if err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := devmanager.New(devmanager.Options{Computation: req, ChunkSize: 64 << 10})
	mctx, mcancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { devmanager.Serve(mctx, ln, srv, nil); close(served) }()
	defer func() { mcancel(); <-served }()

	env := filepath.Join(work, "environment")
	os.WriteFile(env, []byte("AGENT_CVM_GRPC_URL="+ln.Addr().String()+"\nAGENT_CVM_ID=e2e\n"), 0o600)
	sup := exec.Command(filepath.Join(bin, "cvmd"), "supervise", "--dev", "--state", filepath.Join(work, "state"),
		"--listen", agentAddr, "--env", env, "--attestation", "simulated")
	logf, _ := os.Create(filepath.Join(work, "supervisor.log"))
	defer logf.Close()
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sup.Wait() }()
	defer func() {
		sup.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			sup.Process.Kill()
			<-exited
			t.Error("cvmd did not stop within 20 s of SIGTERM")
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(work, "supervisor.log"))
			t.Logf("supervisor log:\n%s", tail(string(b), 4000))
		}
	}()

	has := func(pred func(devmanager.Received) bool) func([]devmanager.Received) bool {
		return func(ms []devmanager.Received) bool {
			for _, m := range ms {
				if pred(m) {
					return true
				}
			}
			return false
		}
	}
	if err := srv.Wait(ctx, has(func(m devmanager.Received) bool { return m.Msg.GetRunRes() != nil })); err != nil {
		t.Fatal("no run response from the guest")
	}
	t0 := srv.RunSentAt()
	for _, m := range srv.Messages() {
		if rr := m.Msg.GetRunRes(); rr != nil && rr.GetError() != "" {
			t.Fatalf("guest refused the computation: %s", rr.GetError())
		}
	}
	retry := func(args ...string) {
		t.Helper()
		var out string
		var err error
		for i := 0; i < 100; i++ {
			if out, err = cvm(ctx, args...); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("cvm %v: %v\n%s", args, err, out)
	}
	retry("algo", algo, filepath.Join(work, "private.pem"), "-a", "bin")
	retry("data", data, filepath.Join(work, "private.pem"))
	out := filepath.Join(work, "out")
	retry("result", filepath.Join(work, "private.pem"), "-o", out)
	elapsed := time.Since(t0)

	zr, err := zip.OpenReader(filepath.Join(out, "results.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var result string
	for _, f := range zr.File {
		if f.Name == "result.txt" {
			rc, _ := f.Open()
			b, _ := io.ReadAll(rc)
			rc.Close()
			result = string(b)
		}
	}
	if !strings.HasPrefix(result, "accuracy 0.9") {
		t.Fatalf("result.txt = %q, want an accuracy ≥ 0.9", result)
	}

	if err := srv.Command("stop e2e-1"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Wait(ctx, has(func(m devmanager.Received) bool { return m.Msg.GetStopComputationRes() != nil })); err != nil {
		t.Fatal("no stop response")
	}
	// The events of the run reached the manager on the log stream.
	wantEvents := []string{"agent/Running/Completed", "agent/Complete/Completed", "computation-runner/AlgorithmRun/Completed"}
	for _, w := range wantEvents {
		if err := srv.Wait(ctx, has(func(m devmanager.Received) bool {
			e := m.Msg.GetAgentEvent()
			return m.Stream == "log" && e != nil && e.GetOriginator()+"/"+e.GetEventType()+"/"+e.GetStatus() == w
		})); err != nil {
			t.Fatalf("event %s never reached the manager", w)
		}
	}
	for _, m := range srv.Messages() {
		if m.Stream == "control" && (m.Msg.GetAgentLog() != nil || m.Msg.GetAgentEvent() != nil) {
			t.Fatalf("log record on the control stream: %v", m.Msg)
		}
		if m.JobID != "e2e" {
			t.Fatalf("%s stream without job-id e2e", m.Stream)
		}
	}
	t.Logf("sample computation: sent → results.zip in %s; result %q", elapsed, strings.TrimSpace(result))
	if os.Getenv("CVMD_BENCH") == "1" {
		fmt.Printf("BENCH run_e2e_ms %.1f ms\n", float64(elapsed.Microseconds())/1000)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestBenchRunE2E is the benchmark entry `make bench` selects (^TestBench).
func TestBenchRunE2E(t *testing.T) {
	if os.Getenv("CVMD_BENCH") != "1" {
		t.Skip("CVMD_BENCH=1 runs benchmarks")
	}
	TestE2ESampleComputation(t)
}
