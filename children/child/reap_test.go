package child_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
)

// orphansMain makes orphans (a shell that exits leaving a short sleep behind,
// reparented to this process, PID 1 of its namespace) and then checks that
// none of them is left a zombie: Ready if so, else an error naming it.
func orphansMain(ctx context.Context, env *child.Env) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("not PID 1 (pid %d)", os.Getpid())
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		return err
	}
	for range 3 {
		if _, err := syscall.ForkExec(sh, []string{"sh", "-c", "sleep 0.1 & exit 0"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}}); err != nil {
			return err
		}
	}
	// Wait (bounded) until this process has no child at all, looking
	// with WNOWAIT so that only the runtime's reaper collects them.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		switch {
		case errors.Is(err, unix.ECHILD):
			return env.Ready() // every child and orphan was reaped
		case err != nil:
			return err
		case time.Now().After(deadline) && info.Signo != 0:
			return errors.New("a zombie was left unreaped for 10 s")
		case time.Now().After(deadline):
			return errors.New("children still running after 10 s")
		}
		time.Sleep(5 * time.Millisecond) // polling the process table, bounded by deadline
	}
}

func TestChildAsPID1ReapsOrphans(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	ctlSup, ctlChild, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	cmd := testutil.HelperCommand("orphans")
	cmd.ExtraFiles = []*os.File{ctlChild}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctlChild.Close()
	s := &started{cmd: cmd, ctl: ipc.NewControl(ctlSup)}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); s.ctl.Close() })
	cfg := &control.ChildConfig{Version: child.ConfigVersion, Name: "orphans", LogLevel: "error"}
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: cfg}}}, nil); err != nil {
		t.Fatal(err)
	}
	m := s.recv(t)
	if m.GetReady() == nil {
		t.Fatalf("child as PID 1 left zombies: %v", strings.TrimSpace(m.GetStartFailed().GetError()))
	}
}
