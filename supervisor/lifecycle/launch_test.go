package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
)

// namingHandler names its sandboxes and hands back one pipe end as "stdout".
type namingHandler struct{ refuse bool }

func (h namingHandler) Request(_ context.Context, req *control.SandboxRequest) (map[string]*os.File, string, error) {
	if h.refuse {
		return nil, "algo-refused", errors.New("refused")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	w.Close()
	return map[string]*os.File{"stdout": r}, "algo-7", nil
}

func (namingHandler) Kill(uint64)  {}
func (namingHandler) KillAll()     {}
func (namingHandler) Close() error { return nil }

// The runner learns the name of each sandbox (SandboxReply.sandbox_id); a
// refused request carries none.
func TestServeSandboxRequestNamesTheSandbox(t *testing.T) {
	tests := []struct {
		name    string
		h       Sandboxes
		wantID  string
		wantErr bool
	}{
		{"named", namingHandler{}, "algo-7", false},
		{"refused", namingHandler{refuse: true}, "", true},
		{"no handler", nil, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mine, theirs, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
			if err != nil {
				t.Fatal(err)
			}
			sup, run := ipc.NewControl(mine), ipc.NewControl(theirs)
			defer sup.Close()
			defer run.Close()
			s := &Supervisor{}
			s.serveSandboxRequest(context.Background(), &incarnation{ctl: sup}, tc.h, &control.SandboxRequest{Id: 3}, slog.New(slog.DiscardHandler))
			msg, files, err := run.Recv()
			if err != nil {
				t.Fatal(err)
			}
			closeFiles(files)
			rep := msg.GetSandboxReply()
			if rep.GetId() != 3 || rep.GetSandboxId() != tc.wantID || (rep.GetError() != "") != tc.wantErr {
				t.Fatalf("reply %v, want id 3, sandbox_id %q, error %v", rep, tc.wantID, tc.wantErr)
			}
			if !tc.wantErr && files["stdout"] == nil {
				t.Fatalf("reply without its stdout fd: %v", files)
			}
		})
	}
}
