package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	agentchild "github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/proto/runner"
)

// TestMain turns the test binary into `cvmd agent` when asked, so tests can
// run the real child (its Main and the child runtime) as its own process.
func TestMain(m *testing.M) {
	helpers := testutil.Helpers{
		"agent":    withPprof("agent", func() int { return testutil.ExitCode(child.Run("agent", agentchild.Main)) }),
		"ingress":  withPprof("ingress", func() int { return testutil.ExitCode(child.Run("ingress", ingress.Main)) }),
		"sha3file": sha3FileHelper,
	}
	for name, h := range refHelpers {
		helpers[name] = h
	}
	testutil.Main(m, helpers)
}

// proc is the agent child running as a separate process, wired as the
// supervisor wires it: control channel on fd 3, edges from:supervisor,
// from:ingress and to:runner.
type proc struct {
	cmd     *exec.Cmd
	ctl     *ipc.Control
	Dial    func(ctx context.Context) (net.Conn, error)
	Control agentctl.ControlClient
	Runner  *agenttest.Runner // the runner stand-in, in the test process
	// ingressEdge is the dialing end of the agent's from:ingress edge, for
	// an ingress child to dial the agent with (as the supervisor wires it).
	ingressEdge *os.File
	closers     []func()
}

func startProc(t *testing.T, stateDir string) *proc {
	t.Helper()
	return startProcWith(t, stateDir, procOptions{})
}

// procOptions add edges and settings to the agent process.
type procOptions struct {
	Settings *config.AgentSettings
	// Extra fds by name (e.g. "to:egress", "to:attestation"): the child's
	// ends; startProcWith passes and closes them.
	Extra map[string]*os.File
}

func startProcWith(t *testing.T, stateDir string, o procOptions) *proc {
	t.Helper()
	comp := filepath.Join(stateDir, "computation")
	// The runner stand-in lives in the test process.
	rl, rd := agenttest.Edge(t, "runner")
	rs := grpc.NewServer()
	rn := &agenttest.Runner{Dir: comp}
	runner.RegisterRunnerServer(rs, rn)
	go rs.Serve(rl)

	ctlParent, ctlChild, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	pair := func(name string) (*os.File, *os.File) {
		a, b, err := ipc.Socketpair(unix.SOCK_SEQPACKET, name)
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	supCli, supSrv := pair("from:supervisor")
	ingCli, ingSrv := pair("from:ingress")
	// to:runner: the child dials over its end; our end is served by rl.
	runCli, runSrv := pair("to:runner")
	rl.Add(runSrv)

	cmd := testutil.HelperCommand("agent")
	cmd.ExtraFiles = []*os.File{ctlChild, supSrv, ingSrv, runCli} // fds 3, 4, 5, 6
	fds := map[string]int32{"from:supervisor": 4, "from:ingress": 5, "to:runner": 6}
	for name, f := range o.Extra {
		fds[name] = int32(3 + len(cmd.ExtraFiles))
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	p := &proc{cmd: cmd, ctl: ipc.NewControl(ctlParent), Runner: rn}
	cfg := &control.ChildConfig{Version: 1, Name: "agent", StateDir: stateDir, LogLevel: agentLogLevel(), Fds: fds}
	if o.Settings != nil {
		a, err := anypb.New(o.Settings)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Settings = a
	}
	hello := &control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: cfg}}}
	if err := p.ctl.Send(hello, nil); err != nil {
		t.Fatal(err)
	}
	msg, _, err := p.ctl.Recv()
	if err != nil || msg.GetReady() == nil {
		t.Fatalf("agent child did not say ready: %v %v", msg, err)
	}
	sd := ipc.NewDialer("agent-control", supCli)
	ingDup, err := unix.Dup(int(ingCli.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	p.ingressEdge = os.NewFile(uintptr(ingDup), "to:agent")
	id := ipc.NewDialer("agent", ingCli)
	p.Dial = id.Dial
	conn, err := ipc.GRPCClient(sd, agenttest.BoundedCalls(agenttest.CallBound))
	if err != nil {
		t.Fatal(err)
	}
	p.Control = agentctl.NewControlClient(conn)
	p.closers = []func(){func() { conn.Close() }, func() { sd.Close() }, func() { id.Close() }, func() { p.ingressEdge.Close() }, rs.Stop, func() { rd.Close() }}
	t.Cleanup(p.kill)
	return p
}

// kill ends the process with SIGKILL (no chance to clean up) and waits.
func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	for _, c := range p.closers {
		c()
	}
	p.closers = nil
	p.ctl.Close()
}

// peakRSSMiB reads VmHWM of the process.
func (p *proc) peakRSSMiB(t *testing.T) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// procWorld is a world whose agent is a separate process.
func newProcWorld(t *testing.T, script string) (*world, *proc, string) {
	state := t.TempDir()
	p := startProc(t, state)
	w := &world{dir: t.TempDir()}
	w.setup(t, script)
	w.dial = p.Dial
	w.control = p.Control
	w.compDir = filepath.Join(state, "computation")
	w.start(t)
	return w, p, state
}

func TestAgentProcessKilledAndResumed(t *testing.T) {
	w, p, state := newProcWorld(t, "#!/bin/sh\nsleep 1\ncat datasets/* > results/all.csv\n")
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	// kill -9 between uploads.
	p.kill()
	p = startProc(t, state)
	w.dial, w.control = p.Dial, p.Control
	if s := w.state(t); s != "ReceivingData" {
		t.Fatalf("resumed in %s", s)
	}
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	// kill -9 while the algorithm runs.
	testutil.WaitUntil(t, 20*time.Second, "the algorithm running", func() bool { return p.Runner.Running() > 0 })
	p.kill()
	p = startProc(t, state)
	w.dial, w.control = p.Dial, p.Control
	w.waitState(t, "ConsumingResults")
	w.mustCVM(t, false, "result", w.cons1.KeyFile, "-o", w.dir)
	if s := w.state(t); s != "Complete" {
		t.Fatalf("state %s", s)
	}
}

// cpuSeconds is the process's user+system CPU time so far.
func (p *proc) cpuSeconds(t *testing.T) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which ends at the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// agentLogLevel is the agent child's log level: warn, or
// CVMD_TEST_AGENT_LOG (info shows each upload's timing).
func agentLogLevel() string {
	if l := os.Getenv("CVMD_TEST_AGENT_LOG"); l != "" {
		return l
	}
	return "warn"
}
