package child_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
)

// The test binary doubles as the child: TestMain runs child.Run when asked to,
// the way cvmd's dispatch table does.
func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Helpers{
		"orphans": func() int { return testutil.ExitCode(child.Run("orphans", orphansMain)) },
		"echo":    func() int { return testutil.ExitCode(child.Run("echo", echoMain)) },
	})
}

// echoMain serves a line echo on every from: edge and answers a Command
// carrying a string with its upper-case form.
func echoMain(ctx context.Context, env *child.Env) error {
	// CHILD_TEST_SLOW_START: a child that takes a while before it registers
	// its handlers, as a real child does while it opens its TPM.
	if os.Getenv("CHILD_TEST_SLOW_START") != "" {
		time.Sleep(300 * time.Millisecond)
	}
	env.HandleCommand(&wrapperspb.StringValue{}, func(ctx context.Context, body proto.Message) (proto.Message, error) {
		v := body.(*wrapperspb.StringValue).GetValue()
		switch {
		case v == "panic":
			panic("the command handler panicked")
		case strings.HasPrefix(v, "linger:"):
			// A handler with cleanup to do after the child is told to stop.
			<-ctx.Done()
			time.Sleep(300 * time.Millisecond) // the cleanup's work, not a wait for anything
			return nil, os.WriteFile(strings.TrimPrefix(v, "linger:"), []byte("done"), 0o600)
		}
		return wrapperspb.String(strings.ToUpper(v)), nil
	})
	l := env.Listener()
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	if err := env.Ready(); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// started is a child process and the supervisor's ends of its fds.
type started struct {
	cmd  *exec.Cmd
	ctl  *ipc.Control
	dial *ipc.Dialer
}

func start(t *testing.T, cfg *control.ChildConfig) *started {
	t.Helper()
	ctlSup, ctlChild, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	edgeCli, edgeSrv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "edge")
	if err != nil {
		t.Fatal(err)
	}
	cmd := testutil.HelperCommand("echo")
	cmd.ExtraFiles = []*os.File{ctlChild, edgeSrv} // fd 3, fd 4
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctlChild.Close()
	edgeSrv.Close()
	s := &started{cmd: cmd, ctl: ipc.NewControl(ctlSup), dial: ipc.NewDialer("echo", edgeCli)}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.ctl.Close()
		s.dial.Close()
	})
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: cfg}}}, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func goodConfig() *control.ChildConfig {
	return &control.ChildConfig{Version: child.ConfigVersion, Name: "echo", LogLevel: "error", Fds: map[string]int32{"from:client": 4}}
}

func (s *started) recv(t *testing.T) *control.Message {
	t.Helper()
	type result struct {
		m   *control.Message
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, files, err := s.ctl.Recv()
		for _, f := range files {
			f.Close()
		}
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("control: %v", r.err)
		}
		return r.m
	case <-time.After(10 * time.Second):
		t.Fatal("no control message from the child within 10 s")
	}
	return nil
}

func echo(t *testing.T, d *ipc.Dialer, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, line)
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(got) != line {
		t.Fatalf("echo %q: got %q, %v", line, got, err)
	}
}

func TestChildReadyServesRewiresAndStops(t *testing.T) {
	s := start(t, goodConfig())
	if m := s.recv(t); m.GetReady() == nil {
		t.Fatalf("first message %v, want ready", m)
	}
	echo(t, s.dial, "first edge")

	// A client restarted: the child gets a second edge and serves both.
	cli2, srv2, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "edge2")
	if err != nil {
		t.Fatal(err)
	}
	rw := &control.Message{Body: &control.Message_Rewire{Rewire: &control.Rewire{Edge: "from:client2"}}}
	if err := s.ctl.Send(rw, map[string]*os.File{"from:client2": srv2}); err != nil {
		t.Fatal(err)
	}
	srv2.Close()
	d2 := ipc.NewDialer("echo2", cli2)
	defer d2.Close()
	echo(t, d2, "second edge")
	echo(t, s.dial, "first edge still served")

	// A command round trip.
	body, _ := anypb.New(wrapperspb.String("shout"))
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Command{Command: &control.Command{Id: 7, Body: body}}}, nil); err != nil {
		t.Fatal(err)
	}
	m := s.recv(t)
	r := m.GetCommandReply()
	if r == nil || r.GetId() != 7 || r.GetError() != "" {
		t.Fatalf("command reply %v", m)
	}
	var out wrapperspb.StringValue
	if err := r.GetBody().UnmarshalTo(&out); err != nil || out.GetValue() != "SHOUT" {
		t.Fatalf("command answer %q, %v", out.GetValue(), err)
	}

	// Stop ends the child with status 0.
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Stop{Stop: &control.Stop{Reason: "test"}}}, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child exit after stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("child did not stop within 10 s")
	}
}

// TestCommandBeforeReadyWaitsForHandlers: the supervisor may send a command
// as soon as the child runs; one that arrives before the child registered
// its handlers is answered once it has, not refused.
func TestCommandBeforeReadyWaitsForHandlers(t *testing.T) {
	t.Setenv("CHILD_TEST_SLOW_START", "1")
	s := start(t, goodConfig())
	body, _ := anypb.New(wrapperspb.String("early"))
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Command{Command: &control.Command{Id: 1, Body: body}}}, nil); err != nil {
		t.Fatal(err)
	}
	var reply *control.CommandReply
	for reply == nil {
		m := s.recv(t)
		reply = m.GetCommandReply()
	}
	if reply.GetError() != "" {
		t.Fatalf("early command refused: %s", reply.GetError())
	}
	var out wrapperspb.StringValue
	if err := reply.GetBody().UnmarshalTo(&out); err != nil || out.GetValue() != "EARLY" {
		t.Fatalf("early command answered %q, %v", out.GetValue(), err)
	}
}

func TestChildRefusesBadConfigInItsOwnWords(t *testing.T) {
	tests := []struct {
		name string
		mut  func(*control.ChildConfig)
		want string
	}{
		{"wrong version", func(c *control.ChildConfig) { c.Version = 2 }, "config version 2"},
		{"config for another child", func(c *control.ChildConfig) { c.Name = "agent" }, `config is for child "agent"`},
		{"fd number clashing with control", func(c *control.ChildConfig) { c.Fds["x"] = 3 }, `fd "x" has number 3`},
		{"fd not passed", func(c *control.ChildConfig) { c.Fds["ghost"] = 9 }, `fd "ghost" (9) not passed`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := goodConfig()
			tc.mut(cfg)
			s := start(t, cfg)
			m := s.recv(t)
			f := m.GetStartFailed()
			if f == nil || !strings.Contains(f.GetError(), tc.want) {
				t.Fatalf("got %v, want start_failed containing %q", m, tc.want)
			}
			if err := s.cmd.Wait(); err == nil {
				t.Fatal("child exited 0 after refusing its config")
			}
		})
	}
}

func (s *started) command(t *testing.T, id uint64, v string) {
	t.Helper()
	body, _ := anypb.New(wrapperspb.String(v))
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Command{Command: &control.Command{Id: id, Body: body}}}, nil); err != nil {
		t.Fatal(err)
	}
}

// wait returns the child's exit, failing t after 10 s.
func (s *started) wait(t *testing.T) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("child did not exit within 10 s")
	}
	return nil
}

// TestPanicInACommandIsReportedLikeMain's: a panic in a command handler (a
// goroutine of the runtime) reaches the supervisor as start_failed with the
// panic and its stack, and the child exits 1, as for a panic in main.
func TestPanicInACommandIsReportedLikeMain(t *testing.T) {
	s := start(t, goodConfig())
	if m := s.recv(t); m.GetReady() == nil {
		t.Fatalf("first message %v, want ready", m)
	}
	s.command(t, 1, "panic")
	m := s.recv(t)
	f := m.GetStartFailed()
	if f == nil || !strings.Contains(f.GetError(), "echo: panic in command: the command handler panicked") || !strings.Contains(f.GetError(), "goroutine") {
		t.Fatalf("got %v, want start_failed with the command's panic and stack", m)
	}
	err := s.wait(t)
	if s.cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("child exit %v, want status 1 (a reported failure, not Go's unrecovered panic)", err)
	}
}

// TestStopWaitsForCommands: a command still running when the supervisor
// says stop finishes (its context ends) before the child exits.
func TestStopWaitsForCommands(t *testing.T) {
	s := start(t, goodConfig())
	if m := s.recv(t); m.GetReady() == nil {
		t.Fatalf("first message %v, want ready", m)
	}
	marker := filepath.Join(t.TempDir(), "cleaned-up")
	s.command(t, 1, "linger:"+marker)
	if err := s.ctl.Send(&control.Message{Body: &control.Message_Stop{Stop: &control.Stop{Reason: "test"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.wait(t); err != nil {
		t.Fatalf("child exit after stop: %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the command's cleanup did not finish before the child exited: %v", err)
	}
}
