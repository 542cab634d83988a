package algosandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/sandbox"
)

// TestMain makes this test binary libcontainer's init, for the tests that
// start real algorithm sandboxes.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		sandbox.Init() // never returns
	}
	os.Exit(m.Run())
}

// realSandboxes is a Sandboxes over a real runtime, with proxy as its
// proxy hand-over.
func realSandboxes(t *testing.T, proxy func(edge string, ln *os.File) error) *Sandboxes {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, cgroups, mounts)")
	}
	dir := t.TempDir()
	rt, err := sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: filepath.Join(dir, "sandbox"), CgroupRoot: fmt.Sprintf("cvmd-algotest-%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"computation", "runner"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	a, err := New(Config{Runtime: rt, ComputationDir: filepath.Join(dir, "computation"), WorkDir: filepath.Join(dir, "runner"),
		RunDir: filepath.Join(dir, "run"), Cvmd: "/proc/self/exe", Proxy: proxy})
	if err != nil {
		rt.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		if err := rt.Close(); err != nil {
			t.Errorf("closing the runtime: %v", err)
		}
	})
	return a
}

// A request whose context has ended is not served: the runner that asked
// is gone (before, the sandbox was made and started all the same), and a
// context that ends during the request ends the sandbox being made.
func TestRequestHonoursItsContext(t *testing.T) {
	sleep := &control.SandboxRequest{Id: 1, ComputationId: "c", Args: []string{"/bin/sleep", "60"}}
	t.Run("ended before", func(t *testing.T) {
		a := realSandboxes(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		files, _, err := a.Request(ctx, sleep)
		for _, f := range files {
			f.Close()
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Request with an ended context: files %v, err %v; want context.Canceled", files, err)
		}
		if n := a.Live(); n != 0 {
			t.Errorf("%d sandboxes live after a refused request", n)
		}
	})
	t.Run("ends during", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// The proxy hand-over comes in the middle of the request, before
		// the container is made: end the request there.
		a := realSandboxes(t, func(_ string, ln *os.File) error { ln.Close(); cancel(); return nil })
		files, _, err := a.Request(ctx, sleep)
		for _, f := range files {
			f.Close()
		}
		if err == nil {
			t.Fatal("Request whose context ended during it was served")
		}
		if n := a.Live(); n != 0 {
			t.Errorf("%d sandboxes live after a cancelled request", n)
		}
	})
}

// A restarted runner asks again with the ids its dead predecessor used: a
// request whose id is held by a run KillAll killed waits for that run to
// end, then is served (it was refused "already running" when the runner
// restarted faster than the old sandbox was torn down); an id held by a
// run nobody killed is still refused.
func TestRequestAfterKillAllReusesTheID(t *testing.T) {
	a := realSandboxes(t, nil)
	sleep := &control.SandboxRequest{Id: 1, ComputationId: "c", Args: []string{"/bin/sleep", "60"}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	request := func() error {
		files, _, err := a.Request(ctx, sleep)
		for _, f := range files {
			f.Close()
		}
		return err
	}
	if err := request(); err != nil {
		t.Fatal(err)
	}
	if err := request(); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("a second request for a live id: %v, want refused as already running", err)
	}
	a.KillAll()
	if err := request(); err != nil {
		t.Fatalf("the request after KillAll: %v", err)
	}
	if n := a.Live(); n != 1 {
		t.Fatalf("%d sandboxes live, want 1: the killed one ended before its id was reused", n)
	}
}
