// Package lifecycle is the supervisor's child lifecycle: one event loop
// that starts every child of a table.Table in its own libcontainer sandbox,
// wires the children together with socketpairs (no socket files), waits
// for each to say READY before running its dependents, restarts children
// that exit under the table's restart policy (rewiring their peers instead
// of restarting them), serves the runner's algorithm sandbox requests
// through a Sandboxes, and stops everything in reverse dependency order.
//
// All mutable state of the children is owned by the loop goroutine (Run);
// a child's goroutines and timers only post events to it, and callers from
// other goroutines (Command, NewComputation, Children, Donate) hand it a
// function and wait.
//
// The package does not know what a child does: the table says (entry
// point, settings, sandbox, role). It does not talk to the agent about
// computations, measure anything itself (a Measurer does) or make algorithm
// sandboxes (a Sandboxes does). It imports supervisor/table, sandbox, ipc,
// internal/logsink, internal/lines and proto; only the supervisor's composition (package
// supervisor) imports it. Its errors and log lines speak as "supervisor".
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/table"
)

// Config is what the supervisor proper's loop runs with.
type Config struct {
	// Table is the child table, with the flags that change it applied; New
	// validates it.
	Table *table.Table
	// Runtime makes the children's sandboxes. The caller closes it after
	// Run returned.
	Runtime *sandbox.Runtime
	// State is the --state directory (absolute); children see parts of it.
	State string
	// RunDir holds runtime state: the runtime's, the skeleton rootfs and
	// children.json. Private to one supervisor.
	RunDir string
	// Listen is ingress's TCP address; the supervisor listens and hands the
	// fd over as "listen".
	Listen string
	// Exe is argv before the child name: how a child re-executes cvmd
	// inside its sandbox. Default {"/proc/self/exe"}.
	Exe []string
	// LogLevel is passed to every child. Default "info".
	LogLevel string
	// Dev is set in development mode (not the VM's PID 1).
	Dev bool
	// Settings is what the children's settings are made from; the
	// supervisor sets its Computation and Log.
	Settings table.SettingsInput
	// Log receives the supervisor's own log.
	Log *slog.Logger
	// Sandboxes serves the algorithm sandbox requests of the child with
	// table.RoleAlgorithmSandboxes; nil refuses them. Run closes it before
	// it returns.
	Sandboxes Sandboxes
	// Measurer records the table and every restart; nil measures nothing.
	Measurer Measurer
	// Link runs for Run's whole life (the manager link): from after the
	// first children were launched until their stop; nil for none.
	Link func(ctx context.Context) error
	// TestMisbehave (tests only) replaces children by `cvmd probe child
	// MODE`, a stand-in that breaks the child contract in the named way.
	TestMisbehave map[string]string
	// PanicOnSIGUSR1 is a test-only switch: SIGUSR1 makes the event loop
	// panic, to prove that PID 1 survives and the children come back.
	PanicOnSIGUSR1 bool
}

// Sandboxes makes algorithm sandboxes. Request returns the fds to attach to
// the SandboxReply (named as control.SandboxReply documents), which the
// supervisor closes after sending, and the sandbox's name (sent as
// SandboxReply.sandbox_id). Kill and KillAll end sandboxes at once; KillAll
// is called when the child that asked for them exits, Close when the
// supervisor stops. Methods are called from several goroutines.
type Sandboxes interface {
	Request(ctx context.Context, req *control.SandboxRequest) (files map[string]*os.File, sandboxID string, err error)
	Kill(id uint64)
	KillAll()
	Close() error
}

// Measurer records what the supervisor does. Table is called with the
// table's canonical encoding before any child starts, Restart before every
// restarted child's new incarnation runs. Both are called on the loop and
// must not block.
type Measurer interface {
	Table(ctx context.Context, canonical []byte)
	Restart(ctx context.Context, child string, generation uint32, computationID string)
}

// Supervisor runs the children of a Table.
type Supervisor struct {
	cfg    Config
	table  *table.Table
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
	children    map[string]*childState
	spawning    map[string]uint32 // prepared in the current kick, not started yet
	kicking     bool              // a kick is running
	rekick      bool              // a kick was asked for while one ran
	computation *cvms.ComputationRunReq
	stopping    bool
	booted      bool      // every child was READY once
	bornAt      time.Time // when New made the supervisor

	dialMu  sync.Mutex
	dialers map[string]*ipc.Dialer // guarded by dialMu; supervisor's "to:<server>"
}

// New prepares a supervisor: the table's state directories, the ingress
// listener, the supervisor's own dialers and event sink.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Table == nil || cfg.Runtime == nil {
		return nil, errors.New("supervisor: no table or no sandbox runtime")
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
	cfg.Settings.Log = cfg.Log
	if !filepath.IsAbs(cfg.State) || !filepath.IsAbs(cfg.RunDir) {
		return nil, fmt.Errorf("supervisor: state %q and run dir %q must be absolute", cfg.State, cfg.RunDir)
	}
	for _, d := range cfg.Table.StateDirs() {
		if err := os.MkdirAll(filepath.Join(cfg.State, d), 0o700); err != nil {
			return nil, fmt.Errorf("supervisor: making state dir: %w", err)
		}
	}
	s := &Supervisor{
		cfg:      cfg,
		table:    cfg.Table,
		log:      cfg.Log,
		rt:       cfg.Runtime,
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
				var err error
				if s.listen, s.listenAddr, err = listenTCP(cfg.Listen); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, e := range cfg.Table.Edges {
		if e.Client == table.SupervisorName {
			s.dialers[e.Server] = ipc.NewDialer(e.Server, nil)
		}
	}
	if d := s.dialers[cfg.Table.WithRole(table.RoleLogSink)]; d != nil {
		var err error
		if s.sink, err = logsink.New(d, logsink.Options{Originator: table.SupervisorName, BufferBytes: 1 << 20, MaxWait: -1}); err != nil {
			s.log.Warn("no event sink; events go to the log", "err", err)
		}
	}
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

// Table returns the table the supervisor runs (read-only by convention).
func (s *Supervisor) Table() *table.Table { return s.table }

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

// Events returns the supervisor's event publisher (AgentEvents with
// originator "supervisor", through the log sink, buffered while it is down).
func (s *Supervisor) Events() logsink.Publisher {
	if s.sink != nil {
		return s.sink
	}
	return logsink.LogPublisher(s.log, table.SupervisorName)
}

// Run starts the children and supervises them until ctx ends, then stops
// them in reverse dependency order and releases everything. It returns an
// error only when it could not start (the table could not be measured).
func (s *Supervisor) Run(ctx context.Context) error {
	defer s.release()
	if m := s.cfg.Measurer; m != nil {
		b, err := s.table.Canonical()
		if err != nil {
			return fmt.Errorf("supervisor: encoding the table to measure it: %w", err)
		}
		m.Table(ctx, b)
	}
	s.Events().Event("supervisor.started", "ok", "table_hash", s.table.HashHex())
	var usr1 chan os.Signal
	if s.cfg.PanicOnSIGUSR1 {
		usr1 = notifyUSR1()
	}
	s.kick()
	var linkDone chan error
	if link := s.cfg.Link; link != nil {
		linkDone = make(chan error, 1)
		linkExited := make(chan struct{})
		lctx, cancel := context.WithCancel(ctx)
		defer func() { cancel(); <-linkExited }()
		go func() {
			defer close(linkExited)
			linkDone <- link(lctx)
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
	_, err := s.call(ctx, f)
	return err
}

// call hands f to the loop and waits until f has run or ctx ends. queued
// reports whether the loop took f: it then runs f, even if ctx ends first.
func (s *Supervisor) call(ctx context.Context, f func()) (queued bool, err error) {
	done := make(chan struct{})
	select {
	case s.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	select {
	case <-done:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// post hands an event to the loop; after Run returned it is dropped.
func (s *Supervisor) post(ev event) {
	select {
	case s.events <- ev:
	case <-s.done:
	}
}

// Donate hands f to the running child as a Rewire named name over its
// control channel (the algorithm sandboxes' proxy listeners go to egress
// so). It takes ownership of f: f is closed once sent, or if it cannot be.
// A child that is not running gets nothing.
func (s *Supervisor) Donate(ctx context.Context, child, name string, f *os.File) error {
	queued, err := s.call(ctx, func() { s.sendRewires([]rewire{{peer: child, name: name, f: f}}) })
	if !queued {
		f.Close()
	}
	return err
}

// NewComputation prepares the children for computation req: the settings
// of every per-computation child are made for it (an error refuses the
// computation and changes nothing), restart counters start afresh (failed
// children get another chance), and the per-computation children are
// restarted with the computation id.
func (s *Supervisor) NewComputation(ctx context.Context, req *cvms.ComputationRunReq) error {
	if req.GetId() == "" {
		return errors.New("supervisor: computation without id")
	}
	settings := map[string]proto.Message{}
	for _, spec := range s.table.Children {
		if spec.Scope != table.PerComputation || spec.Settings == nil {
			continue
		}
		in := s.cfg.Settings
		in.Computation = req
		m, err := spec.Settings(&in)
		if err != nil {
			return fmt.Errorf("supervisor: computation %s: %w", req.GetId(), err)
		}
		settings[spec.Name] = m
	}
	return s.do(ctx, func() { s.newComputation(req, settings) })
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
	for _, d := range s.dialers {
		d.Close()
	}
	s.dialMu.Unlock()
	s.wiring.close()
	// Algorithm sandboxes go before the sandbox runtime does.
	if s.cfg.Sandboxes != nil {
		if err := s.cfg.Sandboxes.Close(); err != nil {
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
}
