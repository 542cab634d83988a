package runner_test

import (
	"io"
	"os"
	"sync"
	"testing"
	"time"

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
	got := make(chan struct {
		rep   *control.SandboxReply
		files map[string]*os.File
	}, 1)
	w.algo.Handle(&control.Message{Body: &control.Message_SandboxRequest{SandboxRequest: req}}, nil,
		func(m *control.Message, files map[string]*os.File) error {
			// Own copies, as the runner gets through SCM_RIGHTS.
			dup := map[string]*os.File{}
			for k, f := range files {
				fd, err := dupFile(f)
				if err != nil {
					return err
				}
				dup[k] = fd
			}
			got <- struct {
				rep   *control.SandboxReply
				files map[string]*os.File
			}{m.GetSandboxReply(), dup}
			return nil
		})
	var r struct {
		rep   *control.SandboxReply
		files map[string]*os.File
	}
	select {
	case r = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no sandbox reply")
	}
	if r.rep.GetError() != "" {
		t.Fatalf("sandbox refused: %s", r.rep.GetError())
	}
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

func dupFile(f *os.File) (*os.File, error) {
	fd, err := dupCloexec(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
