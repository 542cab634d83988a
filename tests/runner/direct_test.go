package runner_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
)

func mount(src, dst string) *control.Mount { return &control.Mount{Source: src, Destination: dst} }

var directSeq atomic.Uint64

// runDirect sends one SandboxRequest straight to the supervisor's handler
// (the sandbox half, without the runner) and returns stdout+stderr and the exit.
func runDirect(t *testing.T, w *world, args []string, mounts ...*control.Mount) (string, *control.SandboxExit) {
	t.Helper()
	out, exit, err := runDirectErr(w, args, mounts...)
	if err != nil {
		t.Fatal(err)
	}
	return out, exit
}

// runDirectErr is runDirect for any goroutine.
func runDirectErr(w *world, args []string, mounts ...*control.Mount) (string, *control.SandboxExit, error) {
	req := &control.SandboxRequest{Id: 1<<40 + directSeq.Add(1), ComputationId: "direct", Args: args, Mounts: mounts,
		Env: []string{"PATH=/usr/bin:/bin"}, Cwd: "/cocos"}
	files, _, err := w.algo.Request(context.Background(), req)
	if err != nil {
		return "", nil, fmt.Errorf("sandbox refused: %v", err)
	}
	r := struct{ files map[string]*os.File }{files}
	var out []byte
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range []string{"stdout", "stderr"} {
		f := r.files[name]
		wg.Go(func() {
			b, _ := io.ReadAll(f)
			mu.Lock()
			out = append(out, b...)
			mu.Unlock()
			f.Close()
		})
	}
	b, err := io.ReadAll(r.files["status"])
	r.files["status"].Close()
	wg.Wait()
	if err != nil {
		return "", nil, err
	}
	var exit control.SandboxExit
	if err := proto.Unmarshal(b, &exit); err != nil {
		return "", nil, err
	}
	return string(out), &exit, nil
}

// TestConcurrentSandboxes: sandboxes made at the same time each get their
// own namespace (and their own proxy listener on the same port).
func TestConcurrentSandboxes(t *testing.T) {
	w := newWorld(t, worldOpts{})
	bin := testBinary(t, "escape")
	os.MkdirAll(w.work+"/bin", 0o755)
	b, _ := os.ReadFile(bin)
	os.WriteFile(w.work+"/bin/escape", b, 0o755)
	var wg sync.WaitGroup
	outs := make([]string, 4)
	for i := range outs {
		wg.Go(func() {
			out, exit, err := runDirectErr(w, []string{"/opt/bin/escape", "proxy"}, mount("work/bin", "/opt/bin"))
			if err != nil || exit.GetExitCode() != 0 {
				t.Errorf("sandbox %d: %v %v %s", i, err, exit, out)
			}
			outs[i] = out
		})
	}
	wg.Wait()
	for i, o := range outs {
		if !strings.Contains(o, "proxy reachable") {
			t.Errorf("sandbox %d: %q", i, o)
		}
	}
}
