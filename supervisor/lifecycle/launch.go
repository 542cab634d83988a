package lifecycle

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/internal/lines"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/table"
)

// incarnation is one run of a child: its sandbox, control channel and the
// goroutines that follow them. The event loop owns it; its goroutines only
// send events.
type incarnation struct {
	name    string
	role    table.Role
	gen     uint32
	sb      *sandbox.Sandbox
	ctl     *ipc.Control
	started time.Time
	tail    *tail
	cancel  context.CancelFunc // ends in-flight sandbox requests
	// abandonedAt is when the supervisor gave up waiting for its exit
	// after SIGKILL (zero while it has not).
	abandonedAt time.Time
}

// launch is one incarnation on its way: prepared on the loop, started
// (possibly alongside others) off it, finished on the loop.
type launch struct {
	spec     *table.ChildSpec
	gen      uint32
	ctlMine  *os.File
	ctlChild *os.File
	named    map[string]*os.File // the child's fds (ours to close after start)
	rewires  []rewire
	extra    []*os.File
	cfg      *control.ChildConfig
	sbSpec   *sandbox.Spec
	pr, pw   *os.File
	exec     bool // run the program at once (its dependencies are READY); else only build the sandbox
	sb       *sandbox.Sandbox
	err      error
	// standby is set when the launch adopts the child's standby: the
	// sandbox runs already, and its output and exit are followed.
	standby *standby
}

// prepare makes the control channel, the edge ends (parked or rewired, see
// wiring), the extra fds and the config of c's next incarnation (c.gen).
// Runs on the loop.
func (s *Supervisor) prepare(c *childState) (*launch, error) {
	spec, gen := c.spec, c.gen
	settings, err := s.settingsOf(c)
	if err != nil {
		return nil, fmt.Errorf("settings of %s: %w", spec.Name, err)
	}
	c.sandboxes++
	l := &launch{spec: spec, gen: gen}
	l.ctlMine, l.ctlChild, err = ipc.Socketpair(unix.SOCK_SEQPACKET, spec.Name+":control")
	if err != nil {
		return nil, err
	}
	l.named, l.rewires, err = s.wiring.endsFor(spec.Name, gen, s.liveness)
	if err != nil {
		l.ctlMine.Close()
		l.ctlChild.Close()
		return nil, fmt.Errorf("wiring %s: %w", spec.Name, err)
	}
	for _, fd := range spec.Fds {
		f, err := s.extraFD(spec.Name, fd)
		if err != nil {
			l.abort()
			return nil, err
		}
		l.named[fd] = f
	}
	var fds map[string]int32
	l.extra, fds = extraFiles(l.ctlChild, l.named)
	if l.cfg, err = s.childConfig(c, settings, fds); err != nil {
		l.abort()
		return nil, err
	}
	if l.pr, l.pw, err = os.Pipe(); err != nil {
		l.abort()
		return nil, err
	}
	l.sbSpec = s.sandboxSpec(spec, sandboxID(spec.Name, c.sandboxes))
	return l, nil
}

// childConfig is the config of c's next incarnation (c.gen), sent in its
// Hello.
func (s *Supervisor) childConfig(c *childState, settings proto.Message, fds map[string]int32) (*control.ChildConfig, error) {
	var anySettings *anypb.Any
	if settings != nil {
		var err error
		if anySettings, err = anypb.New(settings); err != nil {
			return nil, fmt.Errorf("encoding settings of %s: %w", c.spec.Name, err)
		}
	}
	return &control.ChildConfig{
		Version:       1,
		Name:          c.spec.Name,
		ComputationId: s.computationID(),
		LogLevel:      s.cfg.LogLevel,
		StateDir:      stateDirOf(c.spec),
		Fds:           fds,
		Settings:      anySettings,
		Generation:    c.gen,
	}, nil
}

// settingsOf makes the settings of c's next incarnation: once per
// computation for a per-computation child (NewComputation makes them when
// the computation starts; the first, at boot, is made here), at every start
// for the others. Runs on the loop.
func (s *Supervisor) settingsOf(c *childState) (proto.Message, error) {
	if c.spec.Settings == nil {
		return nil, nil
	}
	perComputation := c.spec.Scope == table.PerComputation
	if perComputation && c.settings != nil {
		return c.settings, nil
	}
	in := s.cfg.Settings
	if perComputation {
		in.Computation = s.computation
	}
	m, err := c.spec.Settings(&in)
	if err != nil {
		return nil, err
	}
	if perComputation {
		c.settings = m
	}
	return m, nil
}

// abort releases everything of a launch that did not start.
func (l *launch) abort() {
	for _, f := range l.named {
		f.Close()
	}
	for _, r := range l.rewires {
		r.f.Close()
	}
	for _, f := range []*os.File{l.ctlMine, l.ctlChild, l.pr, l.pw} {
		if f != nil {
			f.Close()
		}
	}
}

// run builds the sandbox and, if l.exec, runs its program. It touches
// nothing of the loop's, so several launches may run at once.
func (l *launch) run(rt *sandbox.Runtime) {
	start := rt.Create
	if l.exec {
		start = rt.Start
	}
	l.sb, l.err = start(l.sbSpec, sandbox.IO{Stdout: l.pw, Stderr: l.pw, ExtraFiles: l.extra})
	// The child has its copies now (or never will): ours go (style 5).
	l.pw.Close()
	l.ctlChild.Close()
	for _, f := range l.named {
		f.Close()
	}
	l.pw, l.ctlChild, l.named = nil, nil, nil
}

// finish sends Hello and the peers' rewires and starts the goroutines that
// report to the loop (an adopted standby's output and exit are followed
// already). Runs on the loop.
func (s *Supervisor) finish(l *launch) (*incarnation, error) {
	if l.err != nil {
		l.abort()
		return nil, l.err
	}
	spec, sb := l.spec, l.sb
	ctx, cancel := context.WithCancel(context.Background())
	inc := &incarnation{name: spec.Name, role: spec.Role, gen: l.gen, sb: sb, ctl: ipc.NewControl(l.ctlMine), started: time.Now(), tail: newTail(4096), cancel: cancel}
	if l.standby != nil {
		inc.tail = l.standby.tail
	}
	if err := inc.ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: l.cfg}}}, nil); err != nil {
		s.log.Warn("sending hello", "child", spec.Name, "err", err)
	}
	s.sendRewires(l.rewires)
	log := s.log.With("child", spec.Name)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.readControl(ctx, inc, log) }()
	if l.standby != nil {
		return inc, nil
	}
	pr := l.pr
	outDone := make(chan struct{})
	s.wg.Add(2)
	go func() { defer s.wg.Done(); defer close(outDone); readOutput(pr, inc.tail, log) }()
	go func() { defer s.wg.Done(); s.post(waitExit(inc.name, sb, outDone)) }()
	return inc, nil
}

// waitExit waits for the sandbox's process to exit and for its output to
// end (briefly: the pipe ends when the last process of the sandbox is gone,
// and the crash text should be complete), and says how it ended.
func waitExit(name string, sb *sandbox.Sandbox, outDone <-chan struct{}) evExit {
	st, err := sb.Wait()
	oom := sb.OOMKilled()
	select {
	case <-outDone:
	case <-time.After(500 * time.Millisecond):
	}
	return evExit{name: name, sb: sb, state: st, err: err, oom: oom}
}

// sendRewires hands the peers their new ends and closes our copies.
//
// A peer whose sandbox is being built took its ends when it was prepared:
// an end made since then (a new incarnation of ours) waits for its Hello
// and is sent right after it (sendDeferred); a control channel must start
// with the Hello.
func (s *Supervisor) sendRewires(rs []rewire) {
	for _, r := range rs {
		if r.peer == table.SupervisorName {
			s.replaceDialer(strings.TrimPrefix(r.name, "to:"), r.f)
			continue
		}
		c := s.children[r.peer]
		switch {
		case c != nil && c.status == StatusBuilding:
			c.deferred = append(c.deferred, r)
			continue
		case c == nil || c.inc == nil:
			r.f.Close()
			continue
		}
		err := c.inc.ctl.Send(&control.Message{Body: &control.Message_Rewire{Rewire: &control.Rewire{Edge: r.name}}}, map[string]*os.File{r.name: r.f})
		r.f.Close()
		if err != nil {
			s.log.Warn("rewiring", "child", r.peer, "edge", r.name, "err", err)
		} else {
			s.log.Debug("rewired", "child", r.peer, "edge", r.name)
		}
	}
}

// readControl follows the child's control channel until it closes.
// Garbage is logged and makes the child count as failed (it is killed and
// the restart policy applies); the supervisor itself never stops for it.
func (s *Supervisor) readControl(ctx context.Context, inc *incarnation, log *slog.Logger) {
	// Only the child with the algorithm sandboxes role may ask for them.
	var h Sandboxes
	mayAsk := inc.role == table.RoleAlgorithmSandboxes
	if mayAsk {
		h = s.cfg.Sandboxes
	}
	var reqs sync.WaitGroup
	defer reqs.Wait()
	defer inc.cancel()
	for {
		msg, files, err := inc.ctl.Recv()
		if err != nil {
			if _, bad := err.(*ipc.ProtocolError); bad {
				s.post(evGarbage{name: inc.name, gen: inc.gen, err: err})
				continue
			}
			return // EOF or closed: the waiter reports the exit
		}
		switch b := msg.GetBody().(type) {
		case *control.Message_Ready:
			closeFiles(files)
			s.post(evReady{name: inc.name, gen: inc.gen})
		case *control.Message_StartFailed:
			closeFiles(files)
			s.post(evStartFailed{name: inc.name, gen: inc.gen, text: b.StartFailed.GetError()})
		case *control.Message_CommandReply:
			closeFiles(files)
			s.cmds.deliver(inc, b.CommandReply)
		case *control.Message_SandboxRequest:
			closeFiles(files)
			if !mayAsk {
				s.refuseSandboxRequest(inc, b.SandboxRequest, log)
				continue
			}
			reqs.Add(1)
			go func() {
				defer reqs.Done()
				s.serveSandboxRequest(ctx, inc, h, b.SandboxRequest, log)
			}()
		case *control.Message_SandboxKill:
			closeFiles(files)
			if h != nil {
				h.Kill(b.SandboxKill.GetId())
			}
		default:
			closeFiles(files)
			s.post(evGarbage{name: inc.name, gen: inc.gen, err: fmt.Errorf("unexpected control message %T", b)})
		}
	}
}

// refuseSandboxRequest answers the sandbox request of a child that may not
// ask for algorithm sandboxes.
func (s *Supervisor) refuseSandboxRequest(inc *incarnation, req *control.SandboxRequest, log *slog.Logger) {
	log.Warn("sandbox request refused: not the child with the algorithm sandboxes role", "id", req.GetId())
	reply := &control.SandboxReply{Id: req.GetId(), Error: fmt.Sprintf("supervisor: %s may not ask for algorithm sandboxes", inc.name)}
	if err := inc.ctl.Send(&control.Message{Body: &control.Message_SandboxReply{SandboxReply: reply}}, nil); err != nil {
		log.Warn("sending sandbox reply", "id", req.GetId(), "err", err)
	}
}

func (s *Supervisor) serveSandboxRequest(ctx context.Context, inc *incarnation, h Sandboxes, req *control.SandboxRequest, log *slog.Logger) {
	reply := &control.SandboxReply{Id: req.GetId()}
	var files map[string]*os.File
	if h == nil {
		reply.Error = "supervisor: no algorithm sandbox handler"
	} else {
		f, id, err := h.Request(ctx, req)
		reply.SandboxId = id
		if err != nil {
			reply.Error, reply.SandboxId = err.Error(), ""
			log.Warn("sandbox request refused", "id", req.GetId(), "err", err)
		} else {
			files = f
		}
	}
	err := inc.ctl.Send(&control.Message{Body: &control.Message_SandboxReply{SandboxReply: reply}}, files)
	closeFiles(files)
	if err != nil {
		log.Warn("sending sandbox reply", "id", req.GetId(), "err", err)
		if h != nil && reply.Error == "" {
			h.Kill(req.GetId())
		}
	}
}

// readOutput logs what the child writes on stdout/stderr and keeps the tail
// as its crash text. It reads to EOF whatever the child writes: a line over
// outputPiece bytes is logged in pieces (cut=true on all but the last), since
// a reader that stopped would kill the child with SIGPIPE.
func readOutput(r io.ReadCloser, tail *tail, log *slog.Logger) {
	defer r.Close()
	lines.Each(r, outputPiece, func(line string, more bool) {
		tail.add(line)
		if more {
			log.Info("child output", "line", line, "cut", true)
		} else {
			log.Info("child output", "line", line)
		}
	})
}

// outputPiece bounds one record of a child's output.
const outputPiece = 16 << 10

func closeFiles(files map[string]*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// stateDirOf is the child's own writable directory inside its view.
func stateDirOf(spec *table.ChildSpec) string {
	for _, d := range spec.StateDirs {
		if d.Writable {
			return filepath.Join(table.ViewState, d.Dir)
		}
	}
	return ""
}

// sandboxSpec is the translation of a table entry into a sandbox.Spec
// with the given id (sandboxID); the hostname is the child's name.
func (s *Supervisor) sandboxSpec(spec *table.ChildSpec, id string) *sandbox.Spec {
	ss := &sandbox.Spec{
		ID:       id,
		Hostname: spec.Name,
		Args:     s.childArgs(spec.Name),
		Env:      []string{"PATH=/usr/bin:/bin", "GOMAXPROCS=2"},
		Caps:     spec.Caps,
		Seccomp:  spec.Seccomp,
		Limits:   spec.Limits,
		Mounts:   []sandbox.Mount{{Kind: sandbox.Tmpfs, Dest: "/tmp", SizeBytes: spec.TmpBytes}},
	}
	if spec.HostNet {
		ss.Net = sandbox.NetHost
	}
	for _, d := range spec.StateDirs {
		ss.Mounts = append(ss.Mounts, sandbox.Mount{Kind: sandbox.Bind, Source: filepath.Join(s.cfg.State, d.Dir), Dest: filepath.Join(table.ViewState, d.Dir), Writable: d.Writable})
	}
	for _, f := range spec.HostFiles {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
			ss.Mounts = append(ss.Mounts, sandbox.Mount{Kind: sandbox.Bind, Source: f, Dest: f})
		}
	}
	for _, d := range spec.HostDirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			ss.Mounts = append(ss.Mounts, sandbox.Mount{Kind: sandbox.Bind, Source: d, Dest: d})
		}
	}
	for _, d := range spec.Devices {
		if _, err := os.Stat(d); err == nil {
			ss.Devices = append(ss.Devices, d)
		}
	}
	return ss
}

// tail keeps the last n bytes of a child's output.
type tail struct {
	mu    sync.Mutex
	n     int
	lines []string // guarded by mu
	size  int      // guarded by mu
}

func newTail(n int) *tail { return &tail{n: n} }

func (t *tail) add(l string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, l)
	t.size += len(l) + 1
	for t.size > t.n && len(t.lines) > 1 {
		t.size -= len(t.lines[0]) + 1
		t.lines = t.lines[1:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// childArgs is argv of a child: cvmd's re-execution and the child's name, or
// (tests only) the probe misbehaviour that stands in for it.
func (s *Supervisor) childArgs(name string) []string {
	args := append([]string(nil), s.cfg.Exe...)
	if mode, ok := s.cfg.TestMisbehave[name]; ok {
		return append(args, "probe", "child", mode)
	}
	return append(args, name)
}
