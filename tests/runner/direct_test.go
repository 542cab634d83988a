package runner_test

import (
	"context"
	"io"
	"os"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
)

func mount(src, dst string) *control.Mount { return &control.Mount{Source: src, Destination: dst} }

var directSeq uint64 = 1 << 40

// runDirect sends one SandboxRequest straight to the supervisor's handler
// (the sandbox half, without the runner) and returns stdout+stderr and the exit.
func runDirect(t *testing.T, w *world, args []string, mounts ...*control.Mount) (string, *control.SandboxExit) {
	t.Helper()
	directSeq++
	req := &control.SandboxRequest{Id: directSeq, ComputationId: "direct", Args: args, Mounts: mounts,
		Env: []string{"PATH=/usr/bin:/bin"}, Cwd: "/cocos"}
	files, err := w.algo.Request(context.Background(), req)
	if err != nil {
		t.Fatalf("sandbox refused: %v", err)
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
		t.Fatal(err)
	}
	var exit control.SandboxExit
	if err := proto.Unmarshal(b, &exit); err != nil {
		t.Fatal(err)
	}
	return string(out), &exit
}
