// Package lifecycle is the supervisor's child lifecycle: one event loop
// that starts every child of a table.Table in its own libcontainer sandbox,
// wires the children together with socketpairs (no socket files), waits
// for each to say READY before running its dependents, restarts children
// that exit under the table's restart policy (rewiring their peers instead
// of restarting them; a child's standby, made ahead, becomes its next
// incarnation), serves the runner's algorithm sandbox requests
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
	// Files are the named fds a child may get besides its control channel
	// and edges ("listen": ingress's TCP listener): each incarnation of a
	// child that lists a name in its Fds gets a dup of Files[name]. New
	// refuses a table that names an fd Files lacks. The caller keeps
	// ownership and closes them after Run returned.
	Files map[string]*os.File
	// ListenAddr is the address of the "listen" fd, shown in children.json.
	ListenAddr string
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
	// TestMisbehave replaces children by `cvmd probe child MODE`, a stand-in
	// that breaks the child contract in the named way. Only a test build
	// (-tags cvmdtest) has the flag that sets it, and the probe.
	TestMisbehave map[string]string
	// KillMargin is how long a SIGKILLed child has to exit before the
	// supervisor gives up on it; 0 means the package's KillMargin. Tests
	// set it tiny to make every death late.
	KillMargin time.Duration
	// PanicOnSIGUSR1 makes the event loop panic on SIGUSR1, to prove that
	// PID 1 survives and the children come back. Only a test build has the
	// flag that sets it.
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

	// Owned by the loop goroutine.
	children        map[string]*childState
	computation     *cvms.ComputationRunReq
	wantKick        bool           // a kick is due at the end of this step
	building        int            // sandboxes being built off the loop
	standbyBuilding bool           // a standby is being built off the loop (one at a time)
	stopping        bool           // shutting down
	dirty           bool           // children.json is out of date
	waiters         []*waiter      // callers waiting for a condition (NewComputation)
	abandoned       []*incarnation // did not die after SIGKILL; release tries again
	illegal         int            // status changes not in the state machine (a bug)
	statusFailed    bool           // the last children.json write failed
	booted          bool           // every child was READY once
	bornAt          time.Time      // when New made the supervisor

	dialMu  sync.Mutex
	dialers map[string]*ipc.Dialer // guarded by dialMu; supervisor's "to:<server>"
}

// New prepares a supervisor: the table's state directories, the
// supervisor's own dialers and its event sink.
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
	if cfg.KillMargin <= 0 {
		cfg.KillMargin = KillMargin
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
		dialers:  map[string]*ipc.Dialer{},
		bornAt:   time.Now(),
	}
	for i := range cfg.Table.Children {
		spec := &cfg.Table.Children[i]
		s.children[spec.Name] = &childState{spec: spec, status: StatusPending, restarts: Restarts{Policy: cfg.Table.Policy}}
		for _, fd := range spec.Fds {
			if cfg.Files[fd] == nil {
				return nil, fmt.Errorf("supervisor: table: %s wants fd %q, which the supervisor was not given", spec.Name, fd)
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

// Table returns the table the supervisor runs (read-only by convention).
func (s *Supervisor) Table() *table.Table { return s.table }

// extraFD returns a dup of the named fd for an incarnation of child (its
// launch owns it).
func (s *Supervisor) extraFD(child, name string) (*os.File, error) {
	f := s.cfg.Files[name]
	if f == nil {
		return nil, fmt.Errorf("supervisor: %s: no fd %q", child, name)
	}
	fd, err := ipc.FD(f)
	if err != nil {
		return nil, err
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("dup "+name, err)
	}
	return os.NewFile(uintptr(dup), name), nil
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
// restarted with the computation id. It returns once every child it
// (re)starts has its new incarnation launched (or could not start it): the
// old ingress no longer serves when the manager hears the computation runs.
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
	var w *waiter
	var refused error
	if err := s.do(ctx, func() { w, refused = s.newComputation(req, settings) }); err != nil {
		return err
	}
	if refused != nil {
		return refused
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release closes everything the supervisor holds.
func (s *Supervisor) release() {
	close(s.done)
	for _, w := range s.waiters {
		w.done <- errors.New("supervisor: stopped")
	}
	s.waiters = nil
	incs := s.abandoned
	for _, c := range s.children {
		c.stopTimer()
		if c.standbyTimer != nil {
			c.standbyTimer.Stop()
		}
		if st := c.standby; st != nil && st.sb != nil {
			// Not adopted, and its exit will not be handled: the loop is over.
			st.sb.Kill()
			st.sb.Wait()
			st.sb.Destroy()
			st.release()
			c.standby = nil
		}
		if c.inc != nil {
			incs = append(incs, c.inc)
			c.inc = nil
		}
	}
	for _, inc := range incs {
		inc.sb.Kill()
		// The incarnation's waiter gets the same status. Bounded: a process
		// that does not die must not hold the shutdown (its sandbox is
		// destroyed as far as it can be).
		waited := make(chan struct{})
		go func() { inc.sb.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(s.cfg.KillMargin):
			s.log.Error("child did not die after SIGKILL; destroying its sandbox anyway", "child", inc.name, "generation", inc.gen, "sandbox", inc.sb.ID())
		}
		if err := inc.sb.Destroy(); err != nil {
			s.log.Warn("destroying sandbox", "child", inc.name, "err", err)
		}
		inc.ctl.Close()
		inc.cancel()
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
}
