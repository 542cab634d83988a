package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/sandbox"
)

// Config is what the supervisor proper runs with (from flags).
type Config struct {
	// State is the --state directory (absolute); children see parts of it.
	State string
	// RunDir holds runtime state: libcontainer's, the skeleton rootfs and
	// children.json. Private to one supervisor.
	RunDir string
	// CgroupRoot is the relative cgroup path of all children (cleaned at
	// start and at exit).
	CgroupRoot string
	// Listen is ingress's TCP address; the supervisor listens and hands the
	// fd over as "listen".
	Listen string
	// Exe is argv before the child name: how a child re-executes cvmd
	// inside its sandbox. Default {"/proc/self/exe"}.
	Exe []string
	// LogLevel is passed to every child.
	LogLevel string
	// Dev is set in development mode (not the VM's PID 1).
	Dev bool
	// EnvFile is the Cocos environment file given to the manager link.
	EnvFile string
	// SimulatedAttestation makes the attestation child use the TPM simulator.
	SimulatedAttestation bool
	// Table is the child table; nil means DefaultTable().
	Table *Table
	// Log receives the supervisor's own log.
	Log *slog.Logger
	// Hooks connect other parts of the supervisor (see doc.go).
	Hooks Hooks
	// ReadyTimeout, when non-zero, replaces the table's READY timeout (not
	// part of the measured table: it only shortens a wait).
	ReadyTimeout time.Duration
	// RestartWindow, when non-zero, replaces the restart policy's window.
	// The table (and so its measured hash) shows the value in force.
	RestartWindow time.Duration
	// AlgoLimits are the most an algorithm sandbox may get (--algo-*
	// flags); zero fields are the package defaults (see AlgoLimits).
	AlgoLimits AlgoLimits
	// TestMisbehave (tests only) replaces children by `cvmd probe child
	// MODE`, a stand-in that breaks the child contract in the named way.
	TestMisbehave map[string]string
	// PanicOnSIGUSR1 is a test-only switch: SIGUSR1 makes the event loop
	// panic, to prove that PID 1 survives and the children come back.
	PanicOnSIGUSR1 bool
}

// Supervisor runs the children of a Table.
type Supervisor struct {
	cfg    Config
	table  *Table
	log    *slog.Logger
	rt     *sandbox.Runtime
	wiring *wiring
	cmds   *commands
	events chan event
	calls  chan func()
	done   chan struct{}  // closed when Run returns
	wg     sync.WaitGroup // every incarnation's goroutines
	sink   *logsink.Sink
	listen *os.File
	// listenAddr is listen's address, fixed when it was made.
	listenAddr string

	// Owned by the loop goroutine.
	children map[string]*childState
	spawning map[string]uint32 // prepared in the current kick, not started yet
	kicking  bool              // a kick is running
	rekick   bool              // a kick was asked for while one ran
	compID   string
	ingress  *config.IngressSettings // the current computation's, from its AgentConfig; nil = plaintext
	stopping bool
	booted   bool      // every child was READY once
	bornAt   time.Time // when New made the supervisor

	dialMu    sync.Mutex
	dialers   map[string]*ipc.Dialer // guarded by dialMu; supervisor's "to:<server>"
	agentConn *grpc.ClientConn       // guarded by dialMu; over dialers["agent"]
}

type childState struct {
	spec     *ChildSpec
	status   Status
	gen      uint32
	inc      *incarnation
	restarts Restarts
	failText string // last StartFailed text
	serving  bool   // the supervisor reached its gRPC server over the edge (children the supervisor dials)
	timer    *time.Timer
	readyAt  time.Time
	startAt  time.Time
}

// Status of a child.
type Status string

const (
	StatusPending  Status = "pending"  // no sandbox yet
	StatusCreated  Status = "created"  // sandbox built; its program waits for its dependencies to be READY
	StatusStarting Status = "starting" // started, not yet READY
	StatusReady    Status = "ready"
	StatusBackoff  Status = "backoff" // exited, restart scheduled
	StatusFailed   Status = "failed"  // too many restarts; left stopped
	StatusStopping Status = "stopping"
	StatusStopped  Status = "stopped"
)

// New prepares a supervisor: state directories, the sandbox runtime (which
// removes what a crashed predecessor left), the ingress listener.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Table == nil {
		cfg.Table = DefaultTable()
	}
	if cfg.ReadyTimeout > 0 {
		cfg.Table.ReadyTimeout = cfg.ReadyTimeout
	}
	if cfg.RestartWindow > 0 {
		cfg.Table.Policy.Window = cfg.RestartWindow
	}
	if err := cfg.Table.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if len(cfg.Exe) == 0 {
		cfg.Exe = []string{"/proc/self/exe"}
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	if !filepath.IsAbs(cfg.State) || !filepath.IsAbs(cfg.RunDir) {
		return nil, fmt.Errorf("supervisor: state %q and run dir %q must be absolute", cfg.State, cfg.RunDir)
	}
	for _, d := range []string{"agent", "computation", "computation/datasets", "computation/results", "runner", "logfwd", "attestation"} {
		if err := os.MkdirAll(filepath.Join(cfg.State, d), 0o700); err != nil {
			return nil, fmt.Errorf("supervisor: making state dir: %w", err)
		}
	}
	rt, err := sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: filepath.Join(cfg.RunDir, "sandbox"), CgroupRoot: cfg.CgroupRoot})
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	s := &Supervisor{
		cfg:      cfg,
		table:    cfg.Table,
		log:      cfg.Log,
		rt:       rt,
		wiring:   newWiring(cfg.Table),
		cmds:     newCommands(),
		events:   make(chan event, 64),
		calls:    make(chan func()),
		done:     make(chan struct{}),
		children: map[string]*childState{},
		spawning: map[string]uint32{},
		dialers:  map[string]*ipc.Dialer{},
		bornAt:   time.Now(),
	}
	for i := range cfg.Table.Children {
		spec := &cfg.Table.Children[i]
		s.children[spec.Name] = &childState{spec: spec, status: StatusPending, restarts: Restarts{Policy: cfg.Table.Policy}}
		for _, fd := range spec.Fds {
			if fd == "listen" && s.listen == nil {
				if s.listen, s.listenAddr, err = listenTCP(cfg.Listen); err != nil {
					rt.Close()
					return nil, err
				}
			}
		}
	}
	for _, e := range cfg.Table.Edges {
		if e.Client == SupervisorName {
			s.dialers[e.Server] = ipc.NewDialer(e.Server, nil)
		}
	}
	if d := s.dialers["logfwd"]; d != nil {
		if s.sink, err = logsink.New(d, logsink.Options{Originator: SupervisorName, BufferBytes: 1 << 20, MaxWait: -1}); err != nil {
			s.log.Warn("no event sink; events go to the log", "err", err)
		}
	}
	s.installExtensions()
	return s, nil
}

// listenTCP makes ingress's listener and returns it as a file, with the
// address it got (a port 0 is chosen here).
func listenTCP(addr string) (*os.File, string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("supervisor: ingress listener: %w", err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, "", fmt.Errorf("supervisor: ingress listener: %w", err)
	}
	return f, l.Addr().String(), nil
}

// ListenAddr is the ingress listener's address ("" without one).
func (s *Supervisor) ListenAddr() string { return s.listenAddr }

func (s *Supervisor) extraFD(child, name string) (*os.File, error) {
	switch name {
	case "listen":
		if s.listen == nil {
			return nil, fmt.Errorf("supervisor: %s: no listener", child)
		}
		lfd, err := ipc.FD(s.listen)
		if err != nil {
			return nil, err
		}
		fd, err := unix.FcntlInt(uintptr(lfd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("dup listener", err)
		}
		return os.NewFile(uintptr(fd), "listen"), nil
	}
	return nil, fmt.Errorf("supervisor: %s: unknown fd %q", child, name)
}

// Dialer returns the supervisor's dialer to server (edge "to:<server>"), or nil.
func (s *Supervisor) Dialer(server string) *ipc.Dialer {
	s.dialMu.Lock()
	defer s.dialMu.Unlock()
	return s.dialers[server]
}

func (s *Supervisor) replaceDialer(server string, f *os.File) {
	s.dialMu.Lock()
	d := s.dialers[server]
	s.dialMu.Unlock()
	if d == nil {
		f.Close()
		return
	}
	d.Replace(f)
}

func (s *Supervisor) liveness(name string) (uint32, bool) {
	if gen, ok := s.spawning[name]; ok {
		return gen, true
	}
	c := s.children[name]
	if c == nil || c.inc == nil {
		return 0, false
	}
	return c.inc.gen, true
}

// Events returns the supervisor's event publisher (AgentEvents with
// originator "supervisor", through logfwd, buffered while logfwd is down).
func (s *Supervisor) Events() logsink.Publisher {
	if s.sink != nil {
		return s.sink
	}
	return logsink.LogPublisher(s.log, SupervisorName)
}

// Run starts the children and supervises them until ctx ends, then stops
// them in reverse dependency order and releases everything.
func (s *Supervisor) Run(ctx context.Context) error {
	defer s.release()
	if m := s.cfg.Hooks.Measure; m != nil {
		b, _ := s.table.Canonical()
		m(ctx, MeasureTable, b)
	}
	s.startStorage(ctx)
	s.Events().Event("supervisor.started", "ok", "table_hash", s.table.HashHex())
	var usr1 chan os.Signal
	if s.cfg.PanicOnSIGUSR1 {
		usr1 = notifyUSR1()
	}
	s.kick()
	var linkDone chan error
	if link := s.cfg.Hooks.ManagerLink; link != nil {
		linkDone = make(chan error, 1)
		linkExited := make(chan struct{})
		lctx, cancel := context.WithCancel(ctx)
		defer func() { cancel(); <-linkExited }()
		go func() {
			defer close(linkExited)
			linkDone <- link(lctx, s)
		}()
	}
	for {
		select {
		case <-ctx.Done():
			s.shutdown()
			return nil
		case ev := <-s.events:
			s.handle(ev)
		case f := <-s.calls:
			f()
		case <-usr1:
			panic("supervisor: test-only panic (SIGUSR1)")
		case err := <-linkDone:
			s.log.Error("manager link ended", "err", err)
			linkDone = nil
		}
	}
}

// do runs f on the loop and waits for it (or ctx).
func (s *Supervisor) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case s.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// post hands an event to the loop; after Run returned it is dropped.
func (s *Supervisor) post(ev event) {
	select {
	case s.events <- ev:
	case <-s.done:
	}
}

// kick builds a sandbox for every pending child, all of them at once, and
// runs the program of every child whose dependencies are READY. A child
// whose dependencies are not READY yet stays "created": its sandbox is
// complete (namespaces, mounts, cgroup, fds) but its program has not been
// executed; the kick after its last dependency's READY runs it. Building
// ahead is what lets a boot overlap the sandbox work of every level instead
// of paying it level by level; the start order of the programs is the
// table's. Each child is prepared on the loop in table order (a child
// prepared earlier in the batch counts as running for the wiring, so two
// new peers share one edge without rewiring), the sandboxes are built in
// parallel, and each is finished on the loop.
func (s *Supervisor) kick() {
	if s.stopping {
		return
	}
	if s.kicking {
		// Called from within a kick (a start failed and is retried at once):
		// the running kick takes another round.
		s.rekick = true
		return
	}
	s.kicking = true
	defer func() { s.kicking = false }()
	for {
		s.rekick = false
		s.kickOnce()
		if !s.rekick || s.stopping {
			break
		}
	}
	s.writeStatus()
}

// depsReady reports whether every dependency of c is READY.
func (s *Supervisor) depsReady(c *childState) bool {
	for _, d := range c.spec.Deps {
		if s.children[d].status != StatusReady {
			return false
		}
	}
	return true
}

func (s *Supervisor) kickOnce() {
	s.releaseCreated()
	var now, ahead []*launch
	for i := range s.table.Children {
		c := s.children[s.table.Children[i].Name]
		if c.status != StatusPending {
			continue
		}
		c.gen++
		if c.gen > 1 {
			// Measured before the new incarnation runs.
			if m := s.cfg.Hooks.Measure; m != nil {
				b, _ := json.Marshal(map[string]any{"child": c.spec.Name, "generation": c.gen, "computation_id": s.compID})
				m(context.Background(), MeasureRestart, b)
			}
		}
		c.startAt = time.Now()
		l, err := s.prepare(c.spec, c.gen)
		if err != nil {
			s.startFailed(c, err)
			continue
		}
		c.status = StatusStarting
		s.spawning[c.spec.Name] = c.gen
		if l.exec = s.depsReady(c); l.exec {
			now = append(now, l)
		} else {
			ahead = append(ahead, l)
		}
	}
	batch := append(now, ahead...)
	if len(batch) == 0 {
		return
	}
	// The sandboxes are built off the loop, all at once (the runtime's
	// forker threads bound how many fork at a time; building two at a time
	// in dependency order was slower here: 193 against 176 ms median boot).
	// Each launch is finished as soon as it is built, and the loop keeps
	// handling events meanwhile, so that a READY runs the created
	// dependents at once; the kicks those events ask for run after this one.
	built := make(chan *launch, len(batch))
	for _, l := range batch {
		go func() { l.run(s.rt); built <- l }()
	}
	for left := len(batch); left > 0; {
		select {
		case l := <-built:
			left--
			delete(s.spawning, l.spec.Name)
			s.finishLaunch(l)
		case ev := <-s.events:
			s.handle(ev)
		}
		s.releaseCreated()
	}
}

// noteBooted logs, once, when every child is READY for the first time:
// the end of the boot, with the memory the whole system uses then (in the
// VM, where it is the guest's; not in dev mode, where it would be the
// host's).
func (s *Supervisor) noteBooted() {
	if s.booted {
		return
	}
	for _, c := range s.children {
		if c.status != StatusReady {
			return
		}
	}
	s.booted = true
	attrs := []any{"after", time.Since(s.bornAt).Round(time.Millisecond)}
	if !s.cfg.Dev {
		if used, err := memUsedMiB(); err == nil {
			attrs = append(attrs, "mem_used_mib", used)
		}
	}
	s.log.Info("all children ready", attrs...)
}

// memUsedMiB is MemTotal - MemAvailable from /proc/meminfo.
func memUsedMiB() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	var total, avail int64 = -1, -1
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = n
		case "MemAvailable:":
			avail = n
		}
	}
	if total < 0 || avail < 0 {
		return 0, errors.New("supervisor: /proc/meminfo lacks MemTotal or MemAvailable")
	}
	return (total - avail) / 1024, nil
}

// finishLaunch records a built sandbox: started (its program runs) or
// created (it waits for its dependencies).
func (s *Supervisor) finishLaunch(l *launch) {
	c := s.children[l.spec.Name]
	inc, err := s.finish(l)
	s.log.Debug("spawned", "child", c.spec.Name, "executed", l.exec, "took", time.Since(c.startAt))
	if err != nil {
		s.startFailed(c, err)
		return
	}
	if l.exec {
		s.started(c, inc)
		return
	}
	c.inc = inc
	c.status = StatusCreated
	s.log.Debug("child created; its program waits for its dependencies", "child", c.spec.Name, "generation", c.gen)
}

// releaseCreated runs the program of every created child whose
// dependencies are READY, in parallel. A child whose init died meanwhile
// is killed; its exit comes from the incarnation's Wait and the restart
// policy applies.
func (s *Supervisor) releaseCreated() {
	var rel []*childState
	for i := range s.table.Children {
		c := s.children[s.table.Children[i].Name]
		if c.status == StatusCreated && s.depsReady(c) {
			rel = append(rel, c)
		}
	}
	if len(rel) == 0 {
		return
	}
	errs := make([]error, len(rel))
	var wg sync.WaitGroup
	for i, c := range rel {
		c.startAt = time.Now()
		sb := c.inc.sb
		wg.Go(func() { errs[i] = sb.Exec() })
	}
	wg.Wait()
	for i, c := range rel {
		if errs[i] != nil {
			s.log.Error("starting created child", "child", c.spec.Name, "err", errs[i])
			c.inc.sb.Kill()
			c.status = StatusStarting
			continue
		}
		s.started(c, c.inc)
	}
	s.writeStatus()
}

// startFailed applies the restart policy to a child that could not be started.
func (s *Supervisor) startFailed(c *childState, err error) {
	s.log.Error("starting child", "child", c.spec.Name, "err", err)
	s.Events().Event("child.start_failed", "error", "child", c.spec.Name, "error", err.Error())
	c.status = StatusPending
	s.afterExit(c)
}

// started records a running incarnation and arms its READY timeout.
func (s *Supervisor) started(c *childState, inc *incarnation) {
	c.inc = inc
	c.serving = false
	c.status = StatusStarting
	c.failText = ""
	gen := c.gen
	name := c.spec.Name
	c.setTimer(s.table.ReadyTimeout, func() { s.post(evReadyTimeout{name: name, gen: gen}) })
	s.log.Info("child started", "child", name, "pid", inc.sb.Pid(), "generation", gen)
	s.Events().Event("child.started", "ok", "child", name, "pid", inc.sb.Pid(), "generation", gen)
}

func (c *childState) setTimer(d time.Duration, f func()) {
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timer = time.AfterFunc(d, f)
}

func (c *childState) stopTimer() {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}

// current returns the child if ev is about its current incarnation.
func (s *Supervisor) current(name string, gen uint32) *childState {
	c := s.children[name]
	if c == nil || c.inc == nil || c.inc.gen != gen {
		return nil
	}
	return c
}

func (s *Supervisor) handle(ev event) {
	switch e := ev.(type) {
	case evReady:
		c := s.current(e.name, e.gen)
		if c == nil || c.status != StatusStarting {
			return
		}
		c.status = StatusReady
		c.readyAt = time.Now()
		c.setTimer(s.table.Policy.Window, func() { s.post(evStable(e)) })
		s.log.Info("child ready", "child", e.name, "generation", e.gen, "after", c.readyAt.Sub(c.startAt).Round(time.Microsecond))
		s.Events().Event("child.ready", "ok", "child", e.name, "generation", e.gen)
		s.noteBooted()
		if d := s.Dialer(e.name); d != nil {
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.checkServing(e.name, e.gen, d) }()
		}
		s.kick()
	case evServing:
		if c := s.current(e.name, e.gen); c != nil {
			c.serving = e.ok
			if e.ok {
				s.log.Info("child serves over its edge from the supervisor", "child", e.name, "generation", e.gen, "grpc", e.code)
			} else {
				s.log.Error("child said READY but does not serve over its edge", "child", e.name, "generation", e.gen, "grpc", e.code)
			}
			s.writeStatus()
		}
	case evStable:
		if c := s.current(e.name, e.gen); c != nil && c.status == StatusReady {
			c.restarts.Stable()
		}
	case evStartFailed:
		if c := s.current(e.name, e.gen); c != nil {
			c.failText = e.text
			s.log.Error("child could not start", "child", e.name, "error", e.text)
		}
	case evGarbage:
		if c := s.current(e.name, e.gen); c != nil && !s.stopping {
			s.log.Error("garbage on control channel; killing child", "child", e.name, "err", e.err)
			c.failText = "protocol error: " + e.err.Error()
			c.inc.sb.Kill()
		}
	case evReadyTimeout:
		if c := s.current(e.name, e.gen); c != nil && c.status == StatusStarting {
			s.log.Error("child never said READY; killing it", "child", e.name, "timeout", s.table.ReadyTimeout)
			c.failText = fmt.Sprintf("not READY within %v", s.table.ReadyTimeout)
			c.inc.sb.Kill()
		}
	case evExit:
		c := s.current(e.name, e.gen)
		if c == nil {
			return
		}
		s.reap(c, e)
		s.afterExit(c)
	case evRestart:
		c := s.children[e.name]
		if c != nil && c.status == StatusBackoff && c.gen == e.gen {
			c.status = StatusPending
			s.kick()
		}
	}
}

// reap releases an exited incarnation and logs why it ended.
func (s *Supervisor) reap(c *childState, e evExit) {
	inc := c.inc
	c.inc = nil
	c.stopTimer()
	inc.ctl.Close()
	inc.cancel()
	if c.spec.Name == "runner" && s.cfg.Hooks.Sandbox != nil {
		s.cfg.Hooks.Sandbox.KillAll()
	}
	t0 := time.Now()
	if err := inc.sb.Destroy(); err != nil {
		s.log.Warn("destroying sandbox", "child", c.spec.Name, "err", err)
	}
	s.log.Debug("sandbox destroyed", "child", c.spec.Name, "took", time.Since(t0))
	s.cmds.fail(inc)
	how := "unknown"
	if e.err != nil {
		how = e.err.Error()
	} else if e.state != nil {
		how = e.state.String()
	}
	if e.oom {
		how += " (OOM-killed in its cgroup)"
	}
	attrs := []any{"child", c.spec.Name, "generation", inc.gen, "status", how, "uptime", time.Since(inc.started).Round(time.Millisecond)}
	if c.failText != "" {
		attrs = append(attrs, "reason", c.failText)
	}
	if s.stopping || c.status == StatusStopping {
		s.log.Info("child stopped", attrs...)
	} else {
		s.log.Error("child exited", append(attrs, "output", inc.tail.String())...)
	}
	s.Events().Event("child.exited", "error", "child", c.spec.Name, "generation", inc.gen, "status", how, "reason", c.failText)
	// The incarnation's goroutines end now that the channel is closed and
	// the process is gone; release waits for them (s.wg).
}

// afterExit applies the restart policy.
func (s *Supervisor) afterExit(c *childState) {
	if s.stopping || c.status == StatusStopping {
		c.status = StatusStopped
		s.writeStatus()
		return
	}
	delay, failed := c.restarts.Next(time.Now())
	if failed {
		c.status = StatusFailed
		s.log.Error("child failed: too many restarts; others keep running", "child", c.spec.Name,
			"max", s.table.Policy.MaxRestarts, "window", s.table.Policy.Window)
		s.Events().Event("child.failed", "error", "child", c.spec.Name, "restarts", c.restarts.Total())
		s.writeStatus()
		return
	}
	c.status = StatusBackoff
	name, gen := c.spec.Name, c.gen
	s.log.Info("restarting child", "child", name, "in", delay.Round(time.Millisecond), "restart", c.restarts.Total())
	s.Events().Event("child.restarting", "ok", "child", name, "delay_ms", delay.Milliseconds(), "restart", c.restarts.Total())
	if delay == 0 {
		c.status = StatusPending
		s.kick()
		return
	}
	c.setTimer(delay, func() { s.post(evRestart{name: name, gen: gen}) })
	s.writeStatus()
}

// shutdown stops the children in reverse dependency order: at each step,
// every running child that no running child depends on (ingress first,
// logfwd last), together, each with a grace period, then SIGKILL.
func (s *Supervisor) shutdown() {
	s.stopping = true
	s.log.Info("shutting down")
	s.Events().Event("supervisor.shutdown", "ok")
	for _, c := range s.children {
		c.stopTimer()
		if c.inc == nil {
			c.status = StatusStopped
		}
	}
	for {
		var step []*childState
		for _, spec := range s.table.Children {
			c := s.children[spec.Name]
			if c.inc == nil || c.status == StatusStopping {
				continue
			}
			needed := false
			for _, d := range s.table.dependents(spec.Name) {
				if s.children[d].inc != nil {
					needed = true
				}
			}
			if !needed {
				step = append(step, c)
			}
		}
		if len(step) == 0 {
			break
		}
		for _, c := range step {
			if c.spec.Name == "logfwd" && s.sink != nil {
				// Our own stream to logfwd must end, or its gRPC server waits for it.
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				s.sink.Close(ctx)
				cancel()
			}
		}
		s.stopChildren(step, "supervisor shutting down")
	}
	s.writeStatus()
}

// stopChild stops one child (see stopChildren).
func (s *Supervisor) stopChild(c *childState, reason string) {
	s.stopChildren([]*childState{c}, reason)
}

// stopChildren asks the children to stop, waits up to StopGrace, kills
// those still running, and processes their exits. Runs on the loop and
// keeps handling other events meanwhile.
func (s *Supervisor) stopChildren(cs []*childState, reason string) {
	incs := map[*childState]*incarnation{}
	for _, c := range cs {
		created := c.status == StatusCreated
		c.status = StatusStopping
		incs[c] = c.inc
		if created {
			// Only libcontainer's init runs there, holding nothing to save;
			// as PID 1 of its namespace it would answer SIGTERM with exit
			// status 2, which reads like a failure in the log.
			c.inc.sb.Kill()
			continue
		}
		c.inc.ctl.Send((&stopMsg{reason}).msg(), nil)
		c.inc.sb.Signal(unix.SIGTERM)
	}
	running := func() []*childState {
		var out []*childState
		for c, inc := range incs {
			if c.inc == inc {
				out = append(out, c)
			}
		}
		return out
	}
	deadline := time.NewTimer(s.table.StopGrace)
	defer deadline.Stop()
	killed := false
	for len(running()) > 0 {
		select {
		case ev := <-s.events:
			// Everything else keeps being handled (another child's exit is
			// restarted, or just reaped while shutting down; READYs and
			// back-off timers are not lost); the awaited exits end the loop.
			s.handle(ev)
		case <-deadline.C:
			if killed {
				for _, c := range running() {
					s.log.Error("child did not die after SIGKILL", "child", c.spec.Name)
				}
				return
			}
			for _, c := range running() {
				s.log.Warn("child did not stop in time; killing it", "child", c.spec.Name, "grace", s.table.StopGrace)
				c.inc.sb.Kill()
			}
			killed = true
			deadline.Reset(2 * time.Second)
		}
	}
}

// release closes everything the supervisor holds.
func (s *Supervisor) release() {
	close(s.done)
	for _, c := range s.children {
		c.stopTimer()
		if c.inc != nil {
			c.inc.sb.Kill()
			c.inc.sb.Wait()
			c.inc.sb.Destroy()
			c.inc.ctl.Close()
			c.inc.cancel()
			c.inc = nil
		}
	}
	if s.sink != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		s.sink.Close(ctx)
		cancel()
	}
	s.dialMu.Lock()
	if s.agentConn != nil {
		s.agentConn.Close()
	}
	for _, d := range s.dialers {
		d.Close()
	}
	s.dialMu.Unlock()
	s.wiring.close()
	// Algorithm sandboxes (and any hook that holds resources) go before the
	// sandbox runtime does.
	if cl, ok := s.cfg.Hooks.Sandbox.(io.Closer); ok {
		if err := cl.Close(); err != nil {
			s.log.Warn("closing the algorithm sandboxes", "err", err)
		}
	}
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(2 * time.Second):
		s.log.Warn("some child goroutines did not end")
	}
	if s.listen != nil {
		s.listen.Close()
	}
	if err := s.rt.Close(); err != nil {
		s.log.Warn("closing sandbox runtime", "err", err)
	}
}

// ChildInfo is one child's state as shown in children.json and Children.
type ChildInfo struct {
	Name       string `json:"name"`
	Status     Status `json:"status"`
	Pid        int    `json:"pid,omitempty"`
	Generation uint32 `json:"generation"`
	Restarts   int    `json:"restarts"`
	// Serving is set for children the supervisor dials (agent, logfwd) once a
	// gRPC call over the edge was answered by this generation.
	Serving bool `json:"serving,omitempty"`
}

func (s *Supervisor) snapshot() []ChildInfo {
	out := make([]ChildInfo, 0, len(s.table.Children))
	for _, spec := range s.table.Children {
		c := s.children[spec.Name]
		ci := ChildInfo{Name: spec.Name, Status: c.status, Generation: c.gen, Restarts: c.restarts.Total(), Serving: c.serving && c.inc != nil}
		if c.inc != nil {
			ci.Pid = c.inc.sb.Pid()
		}
		out = append(out, ci)
	}
	return out
}

// Children returns the state of every child.
func (s *Supervisor) Children(ctx context.Context) ([]ChildInfo, error) {
	var out []ChildInfo
	err := s.do(ctx, func() { out = s.snapshot() })
	return out, err
}

// writeStatus writes RunDir/children.json atomically (for operators and tests).
func (s *Supervisor) writeStatus() {
	b, _ := json.MarshalIndent(map[string]any{"pid": os.Getpid(), "listen": s.ListenAddr(), "computation_id": s.compID, "children": s.snapshot()}, "", " ")
	tmp := filepath.Join(s.cfg.RunDir, "children.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		os.Rename(tmp, filepath.Join(s.cfg.RunDir, "children.json"))
	}
}
