// Package child is the runtime every cvmd child shares: it reads the child's
// config from the control channel (fd 3), hands out the fds the supervisor
// passed (by name), follows rewiring when a peer restarts, says READY or why
// it could not start, and stops the child when the supervisor says so.
//
// Edge naming: a server child receives the edges of its clients as
// "from:<client>" (all served by one Listener); a client receives its edge to
// a server as "to:<server>" (one Dialer each). Any other name is a plain fd
// (a listening socket, a directory) that the child takes with File.
//
// child imports ipc and proto only; it never imports supervisor/ or sandbox/.
package child

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
)

// ControlFD is the fd number of the control channel in every child.
const ControlFD = 3

// ConfigVersion is the only ChildConfig.version a child accepts.
const ConfigVersion = 1

// Env is a running child's view of the world.
type Env struct {
	Config *control.ChildConfig
	Log    *slog.Logger

	ctl       *ipc.Control
	sink      *logsink.Sink // nil without a "to:logfwd" edge; see log.go
	ready     chan struct{} // closed by Ready
	readyOnce sync.Once

	// Every goroutine the runtime starts is owned: loops (the control loop,
	// the orphan reaper) end when the control channel closes or ctx ends;
	// work (commands, rewire hooks) is waited for, bounded, before that.
	loops, work  sync.WaitGroup
	workMu       sync.Mutex              // orders work.Add against shutdown's work.Wait
	workStopping bool                    // guarded by workMu; no new work once set
	stop         context.CancelCauseFunc // ends the child; set by Run

	panicMu  sync.Mutex
	panicErr error // guarded by panicMu; the first panic of an owned goroutine

	mu        sync.Mutex
	files     map[string]*os.File                              // guarded by mu; not yet taken
	listener  *ipc.Listener                                    // guarded by mu
	dialers   map[string]*ipc.Dialer                           // guarded by mu
	hooks     map[string]func(*os.File)                        // guarded by mu; by fd name prefix
	handlers  map[string]CommandHandler                        // guarded by mu; by Any type URL
	onMessage func(*control.Message, map[string]*os.File) bool // guarded by mu
}

// CommandHandler answers a control.Command sent by the supervisor.
type CommandHandler func(ctx context.Context, body proto.Message) (proto.Message, error)

// Main is the signature of every child's entry point.
type Main func(ctx context.Context, env *Env) error

// workGrace bounds how long a stopping child waits for commands and rewire
// hooks still running after its context ended.
const workGrace = 2 * time.Second

// Run is what `cvmd <child>` calls: it sets the child up from fd 3, runs
// main until the supervisor says stop (or SIGTERM), and reports a start-up
// failure, panics included, on the control channel in the child's own words.
// A panic in a goroutine of the runtime (a command, a rewire hook) is
// reported the same way and ends the child with that error. Run returns
// after every goroutine it started has ended; commands and hooks get
// workGrace after main returns, and one still running then is named on
// stderr and left to the process's exit.
func Run(name string, main Main) (err error) {
	f, ferr := ipc.NewFile(ControlFD, "control")
	if ferr != nil {
		return fmt.Errorf("%s: opening control channel (fd %d): %w", name, ControlFD, ferr)
	}
	env := &Env{ctl: ipc.NewControl(f), ready: make(chan struct{}), dialers: map[string]*ipc.Dialer{}, hooks: map[string]func(*os.File){}, handlers: map[string]CommandHandler{}}
	if err := env.hello(name); err != nil {
		env.fail(err)
		return err
	}
	defer env.closeLog()
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stopSignals()
	ctx, cancel := context.WithCancelCause(sigCtx)
	env.stop = cancel
	if os.Getpid() == 1 {
		// PID 1 of the sandbox's PID namespace: orphans come to us (reap.go).
		env.goLoop("orphan reaper", func() { reapOrphans(ctx) })
	}
	env.goLoop("control loop", func() { env.controlLoop(ctx, func() { cancel(nil) }) })
	err = env.runMain(ctx, name, main)
	if err != nil && !errors.Is(err, context.Canceled) {
		env.fail(err)
	}
	cancel(nil)
	env.shutdown(name)
	if perr := env.panicked(); perr != nil {
		return perr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// runMain runs main, turning its panic into an error.
func (e *Env) runMain(ctx context.Context, name string, main Main) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: panic: %v\n%s", name, r, debug.Stack())
		}
	}()
	return main(ctx, e)
}

// goLoop starts one of the runtime's loops (see Env.loops).
func (e *Env) goLoop(what string, fn func()) { e.loops.Go(e.guarded(what, fn)) }

// goWork starts a command or a rewire hook (see Env.work). It reports false,
// starting nothing, once the child is stopping.
func (e *Env) goWork(what string, fn func()) bool {
	e.workMu.Lock()
	defer e.workMu.Unlock()
	if e.workStopping {
		return false
	}
	e.work.Go(e.guarded(what, fn))
	return true
}

// guarded wraps fn so that its panic is reported like main's and stops the
// child instead of killing the process unreported.
func (e *Env) guarded(what string, fn func()) func() {
	return func() {
		defer func() {
			if r := recover(); r != nil {
				err := fmt.Errorf("%s: panic in %s: %v\n%s", e.Config.GetName(), what, r, debug.Stack())
				e.panicMu.Lock()
				first := e.panicErr == nil
				if first {
					e.panicErr = err
				}
				e.panicMu.Unlock()
				if first {
					e.fail(err)
					e.stop(err)
				}
			}
		}()
		fn()
	}
}

// panicked returns the first panic of an owned goroutine, or nil.
func (e *Env) panicked() error {
	e.panicMu.Lock()
	defer e.panicMu.Unlock()
	return e.panicErr
}

// shutdown waits for the work goroutines (bounded: a handler that ignores
// its context must not keep a stopping child alive), then closes the
// control channel, which ends the control loop, and waits for the loops.
func (e *Env) shutdown(name string) {
	e.workMu.Lock()
	e.workStopping = true
	e.workMu.Unlock()
	done := make(chan struct{})
	go func() { e.work.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(workGrace):
		fmt.Fprintf(os.Stderr, "%s: commands or rewire hooks still running %s after stop; exiting without them\n", name, workGrace)
	}
	e.ctl.Close()
	e.loops.Wait()
}

func (e *Env) hello(name string) error {
	msg, files, err := e.ctl.Recv()
	if err != nil {
		return fmt.Errorf("%s: reading config: %w", name, err)
	}
	h := msg.GetHello()
	if h == nil || h.GetConfig() == nil {
		return fmt.Errorf("%s: first control message is %T, want hello", name, msg.GetBody())
	}
	c := h.GetConfig()
	if c.GetVersion() != ConfigVersion {
		return fmt.Errorf("%s: config version %d, want %d", name, c.GetVersion(), ConfigVersion)
	}
	if c.GetName() != name {
		return fmt.Errorf("%s: config is for child %q", name, c.GetName())
	}
	if len(c.ProtoReflect().GetUnknown()) > 0 {
		return fmt.Errorf("%s: config has unknown fields", name)
	}
	e.Config = c
	e.files = files
	for fname, fd := range c.GetFds() {
		if fd <= ControlFD {
			return fmt.Errorf("%s: fd %q has number %d, want > %d", name, fname, fd, ControlFD)
		}
		// Every fd the supervisor passes is a socket (an edge or a listener).
		// Checking that catches a config naming a number that is open for
		// another reason: the Go runtime itself keeps cgroup files open.
		var st unix.Stat_t
		if err := unix.Fstat(int(fd), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fmt.Errorf("%s: fd %q (%d) not passed (not an open socket)", name, fname, fd)
		}
		if _, dup := e.files[fname]; dup {
			return fmt.Errorf("%s: fd %q both passed at start and attached to the hello", name, fname)
		}
		f, err := ipc.NewFile(int(fd), fname)
		if err != nil {
			return fmt.Errorf("%s: fd %q (%d) not passed: %w", name, fname, fd, err)
		}
		e.files[fname] = f
	}
	e.Log = newLogger(e)
	return nil
}

// Settings decodes the child-specific settings into m, refusing a different
// type or unknown fields. A child without settings gets m untouched.
func (e *Env) Settings(m proto.Message) error {
	any := e.Config.GetSettings()
	if any == nil {
		return nil
	}
	if err := any.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s: settings: %w", e.Config.GetName(), err)
	}
	if len(m.ProtoReflect().GetUnknown()) > 0 {
		return fmt.Errorf("%s: settings have unknown fields", e.Config.GetName())
	}
	return nil
}

// File takes ownership of the fd passed under name. It fails if none was passed.
func (e *Env) File(name string) (*os.File, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f, ok := e.files[name]
	if !ok {
		return nil, fmt.Errorf("%s: fd %q not passed", e.Config.GetName(), name)
	}
	delete(e.files, name)
	return f, nil
}

// Listener returns the listener that serves every "from:*" edge, now and after
// rewiring. The first call creates it; the child owns closing it.
func (e *Env) Listener() *ipc.Listener {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.listener == nil {
		e.listener = ipc.NewListener(e.Config.GetName())
		for name, f := range e.files {
			if strings.HasPrefix(name, "from:") {
				e.listener.Add(f)
				delete(e.files, name)
			}
		}
	}
	return e.listener
}

// Dialer returns the dialer to server (edge "to:<server>"), following
// rewiring. It fails if the supervisor did not wire this child to server.
func (e *Env) Dialer(server string) (*ipc.Dialer, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d, ok := e.dialers[server]; ok {
		return d, nil
	}
	name := "to:" + server
	f, ok := e.files[name]
	if !ok {
		return nil, fmt.Errorf("%s: not wired to %s (fd %q not passed)", e.Config.GetName(), server, name)
	}
	delete(e.files, name)
	d := ipc.NewDialer(server, f)
	e.dialers[server] = d
	return d, nil
}

// OnRewire registers fn for fds the supervisor sends later whose name starts
// with prefix (other than from:/to: edges). fn takes ownership of the file.
func (e *Env) OnRewire(prefix string, fn func(name string, f *os.File)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hooks[prefix] = func(f *os.File) { fn(f.Name(), f) }
}

// HandleCommand registers h for Commands whose body has the type of example.
func (e *Env) HandleCommand(example proto.Message, h CommandHandler) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.handlers[string(example.ProtoReflect().Descriptor().FullName())] = h
}

// Intercept lets a child see control messages the runtime does not handle
// itself (the runner's SandboxReply). fn returns whether it consumed them; fn
// takes ownership of the files when it does.
func (e *Env) Intercept(fn func(*control.Message, map[string]*os.File) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onMessage = fn
}

// Send writes a message to the supervisor (the runner's SandboxRequest).
func (e *Env) Send(msg *control.Message, files map[string]*os.File) error {
	return e.ctl.Send(msg, files)
}

// Ready tells the supervisor the child is serving.
func (e *Env) Ready() error {
	e.readyOnce.Do(func() { close(e.ready) })
	return e.ctl.Send(&control.Message{Body: &control.Message_Ready{Ready: &control.Ready{}}}, nil)
}

func (e *Env) fail(err error) {
	e.ctl.Send(&control.Message{Body: &control.Message_StartFailed{StartFailed: &control.StartFailed{Error: err.Error()}}}, nil)
}

// controlLoop follows the supervisor's messages until the channel closes or
// the supervisor says stop; either ends the child (cancel).
func (e *Env) controlLoop(ctx context.Context, cancel func()) {
	defer cancel()
	for {
		msg, files, err := e.ctl.Recv()
		if err != nil {
			var pe *ipc.ProtocolError
			if errors.As(err, &pe) {
				e.Log.Warn("ignoring bad control message", "err", err)
				continue
			}
			if ctx.Err() == nil {
				e.Log.Info("control channel closed; stopping", "err", err)
			}
			return
		}
		switch b := msg.GetBody().(type) {
		case *control.Message_Stop:
			e.Log.Info("stop requested", "reason", b.Stop.GetReason())
			closeFiles(files)
			return
		case *control.Message_Rewire:
			e.rewire(b.Rewire.GetEdge(), files)
		case *control.Message_Command:
			closeFiles(files)
			cmd := b.Command
			if !e.goWork("command", func() { e.command(ctx, cmd) }) {
				e.ctl.Send(&control.Message{Body: &control.Message_CommandReply{CommandReply: &control.CommandReply{Id: cmd.GetId(), Error: e.Config.GetName() + ": stopping"}}}, nil)
			}
		default:
			e.mu.Lock()
			fn := e.onMessage
			e.mu.Unlock()
			if fn == nil || !fn(msg, files) {
				e.Log.Warn("ignoring unexpected control message", "type", fmt.Sprintf("%T", b))
				closeFiles(files)
			}
		}
	}
}

func (e *Env) rewire(edge string, files map[string]*os.File) {
	f, ok := files[edge]
	if !ok || len(files) != 1 {
		e.Log.Warn("rewire without exactly its fd", "edge", edge, "fds", len(files))
		closeFiles(files)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case strings.HasPrefix(edge, "from:"):
		if e.listener != nil {
			e.listener.Add(f)
		} else {
			e.files[edge] = f
		}
	case strings.HasPrefix(edge, "to:"):
		server := strings.TrimPrefix(edge, "to:")
		if d, ok := e.dialers[server]; ok {
			d.Replace(f)
		} else {
			if old, ok := e.files[edge]; ok {
				old.Close()
			}
			e.files[edge] = f
		}
	default:
		for prefix, fn := range e.hooks {
			if strings.HasPrefix(edge, prefix) {
				if !e.goWork("rewire hook "+prefix, func() { fn(f) }) {
					f.Close() // stopping: nobody would serve it
				}
				return
			}
		}
		e.Log.Warn("rewire of an fd nobody claimed", "edge", edge)
		f.Close()
		return
	}
	e.Log.Debug("rewired", "edge", edge)
}

func (e *Env) command(ctx context.Context, c *control.Command) {
	reply := &control.CommandReply{Id: c.GetId()}
	body, err := c.GetBody().UnmarshalNew()
	if err != nil {
		reply.Error = fmt.Sprintf("decoding command: %v", err)
	} else {
		h := e.handler(body)
		if h == nil {
			// A child registers its handlers before it says READY; a command
			// that arrives earlier (the supervisor may send one as soon as
			// the child runs) waits for READY rather than being refused.
			select {
			case <-e.ready:
			case <-ctx.Done():
			}
			h = e.handler(body)
		}
		if h == nil {
			reply.Error = fmt.Sprintf("%s: no handler for command %s", e.Config.GetName(), body.ProtoReflect().Descriptor().FullName())
		} else if out, herr := h(ctx, body); herr != nil {
			reply.Error = herr.Error()
		} else if out != nil {
			if reply.Body, err = anyOf(out); err != nil {
				reply.Error = err.Error()
			}
		}
	}
	e.ctl.Send(&control.Message{Body: &control.Message_CommandReply{CommandReply: reply}}, nil)
}

func (e *Env) handler(body proto.Message) CommandHandler {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.handlers[string(body.ProtoReflect().Descriptor().FullName())]
}

func closeFiles(files map[string]*os.File) {
	for _, f := range files {
		f.Close()
	}
}
