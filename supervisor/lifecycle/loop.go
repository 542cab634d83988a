package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/supervisor/table"
)

// KillMargin is how long a child has to exit after SIGKILL before the
// supervisor gives up on it (logs it and goes on without it). Stopping one
// child thus takes at most the table's StopGrace plus KillMargin.
const KillMargin = 2 * time.Second

// childState is one child as the loop sees it.
type childState struct {
	spec     *table.ChildSpec
	status   Status // changed by enter only
	gen      uint32
	inc      *incarnation
	restarts Restarts
	// settings are a per-computation child's, made when the computation
	// started (or at boot); nil until then.
	settings proto.Message
	failText string // last StartFailed text
	lastExit string // how the last incarnation ended, with failText (children.json, Children)
	serving  bool   // the supervisor reached its gRPC server over the edge (children the supervisor dials)
	// stop is why the supervisor stopped the current incarnation; "" when
	// it did not.
	stop stopReason
	// replace is set when a new computation replaces a child whose sandbox
	// is being built: it is stopped once built.
	replace bool
	// deferred are ends for it made while its sandbox was being built,
	// sent after its Hello (sendRewires).
	deferred []rewire
	timer    *time.Timer
	readyAt  time.Time
	startAt  time.Time
	// sandboxes counts the sandboxes made for the child (their ids).
	sandboxes int
	// standby is the child's next incarnation made ahead (standby.go); nil
	// when it has none. standbyWanted queues its build, standbyTimer arms
	// it StandbyAfter after READY.
	standby       *standby
	standbyWanted bool
	standbyTimer  *time.Timer
}

// stopReason is why the supervisor stopped a child.
type stopReason string

const (
	stopShutdown stopReason = "supervisor shutting down"
	stopReplaced stopReason = "new computation"
)

// waiter is a caller of the loop waiting for a condition on the children.
type waiter struct {
	cond func() bool
	done chan error // buffered: gets nil when cond holds, or why it never will
}

func notifyUSR1() chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGUSR1)
	return ch
}

// Run starts the children and supervises them until ctx ends, then stops
// them in reverse dependency order and releases everything. It returns an
// error only when it could not start (the table could not be measured).
//
// Run is the loop: the one goroutine that handles every event of every
// child, every call of another goroutine (do), and the shutdown. Nothing
// it does waits for a child: builds run off the loop and report back,
// stopping a child is a message, a signal and a timer. So calls are served
// while children stop (the egress proxy hand-over, Command, Children).
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
	s.wantKick = true
	s.settle()
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
	stop := ctx.Done()
	for {
		select {
		case <-stop:
			stop = nil
			s.beginShutdown()
		case ev := <-s.events:
			s.handle(ev)
		case f := <-s.calls:
			f()
		case <-usr1:
			panic("supervisor: test-only panic (SIGUSR1)")
		case err := <-linkDone:
			if err != nil || !s.stopping {
				s.log.Error("manager link ended", "err", err)
			} else {
				s.log.Info("manager link stopped")
			}
			linkDone = nil
		}
		s.settle()
		if s.stopping && s.allStopped() {
			return nil
		}
	}
}

// settle does what the step the loop just took made due: the kicks it
// asked for, the next children to stop during shutdown, the waiters whose
// condition now holds, and children.json if anything changed.
func (s *Supervisor) settle() {
	for s.wantKick && !s.stopping {
		s.wantKick = false
		s.kick()
	}
	if s.stopping {
		s.stopUnneeded()
	}
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		if w.cond() {
			w.done <- nil
		} else {
			kept = append(kept, w)
		}
	}
	s.waiters = kept
	if s.dirty {
		s.dirty = false
		s.writeStatus()
	}
}

// handle is the one place an event is handled; only Run calls it.
func (s *Supervisor) handle(ev event) {
	switch e := ev.(type) {
	case evBuilt:
		s.built(e.l)
	case evStandbyBuilt:
		s.standbyBuilt(e)
	case evStandbyDue:
		s.standbyDue(e)
	case evReady:
		c := s.current(e.name, e.gen)
		if c == nil || c.status != StatusStarting {
			return
		}
		s.enter(c, StatusReady)
		c.readyAt = time.Now()
		c.setTimer(s.table.Policy.Window, func() { s.post(evStable(e)) })
		s.log.Info("child ready", "child", e.name, "generation", e.gen, "after", c.readyAt.Sub(c.startAt).Round(time.Microsecond))
		s.Events().Event("child.ready", "ok", "child", e.name, "generation", e.gen)
		s.noteBooted()
		s.armStandby(c)
		if d := s.Dialer(e.name); d != nil {
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.checkServing(e.name, e.gen, d) }()
		}
		s.wantKick = true // its created dependents run now
	case evServing:
		if c := s.current(e.name, e.gen); c != nil {
			c.serving = e.ok
			s.dirty = true
			if e.ok {
				s.log.Info("child serves over its edge from the supervisor", "child", e.name, "generation", e.gen, "grpc", e.code)
			} else {
				s.log.Error("child said READY but does not serve over its edge", "child", e.name, "generation", e.gen, "grpc", e.code)
			}
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
		if c := s.current(e.name, e.gen); c != nil && c.stop == "" && !s.stopping {
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
	case evStopDeadline:
		if c := s.current(e.name, e.gen); c != nil && c.status == StatusStopping {
			s.log.Warn("child did not stop in time; killing it", "child", e.name, "grace", s.table.StopGrace)
			c.inc.sb.Kill()
			c.setTimer(s.cfg.KillMargin, func() { s.post(evKillDeadline(e)) })
		}
	case evKillDeadline:
		if c := s.current(e.name, e.gen); c != nil && c.status == StatusStopping {
			s.abandon(c)
		}
	case evExit:
		if c := s.standbyOf(e.name, e.sb); c != nil {
			s.standbyExited(c, e)
			return
		}
		if s.reapAbandoned(e) {
			return
		}
		c := s.children[e.name]
		if c == nil || c.inc == nil || c.inc.sb != e.sb {
			return // an abandoned incarnation's
		}
		s.reap(c, e)
		s.afterExit(c)
	case evRestart:
		c := s.children[e.name]
		if c != nil && c.status == StatusBackoff && c.gen == e.gen {
			s.enter(c, StatusPending)
			s.wantKick = true
		}
	}
}

func (s *Supervisor) liveness(name string) (uint32, bool) {
	c := s.children[name]
	switch {
	case c == nil:
		return 0, false
	case c.status == StatusBuilding:
		// Prepared, its sandbox on the way: it takes the ends made for it.
		return c.gen, true
	case c.inc == nil:
		return 0, false
	}
	return c.inc.gen, true
}

// computationID is the current computation's id ("" before the first).
func (s *Supervisor) computationID() string { return s.computation.GetId() }

// newComputation runs on the loop. It returns the waiter that NewComputation
// waits on: every child it (re)starts has its new incarnation launched.
func (s *Supervisor) newComputation(req *cvms.ComputationRunReq, settings map[string]proto.Message) (*waiter, error) {
	if s.stopping {
		return nil, errors.New("supervisor: shutting down")
	}
	s.computation = req
	if s.sink != nil {
		s.sink.SetComputationID(req.GetId())
	}
	s.dirty = true
	before := map[*childState]uint32{}
	for i := range s.table.Children {
		c := s.children[s.table.Children[i].Name]
		c.restarts.Reset()
		if m, ok := settings[c.spec.Name]; ok {
			c.settings = m
		}
		switch {
		case c.status == StatusFailed:
			s.enter(c, StatusPending)
			s.wantKick = true
			before[c] = c.gen
		case c.spec.Scope != table.PerComputation:
		case c.status == StatusBuilding:
			c.replace = true
			before[c] = c.gen
		case c.status == StatusStopping:
			c.stop = stopReplaced
			before[c] = c.gen
		case c.inc != nil:
			s.stopChild(c, stopReplaced)
			before[c] = c.gen
		}
	}
	w := &waiter{done: make(chan error, 1), cond: func() bool {
		for c, gen := range before {
			switch {
			case c.gen == gen, c.status == StatusPending, c.status == StatusBuilding, c.status == StatusStopping:
				return false
			}
		}
		return true
	}}
	s.waiters = append(s.waiters, w)
	return w, nil
}

// kick runs the program of every created child whose dependencies are
// READY, and builds a sandbox for every pending child, all of them at once.
// A child whose dependencies are not READY yet is built but stays
// "created": its sandbox is complete (namespaces, mounts, cgroup, fds) but
// its program has not been executed; the kick after its last dependency's
// READY runs it. Building ahead is what lets a boot overlap the sandbox
// work of every level instead of paying it level by level; the start order
// of the programs is the table's. Each child is prepared on the loop in
// table order (a child prepared earlier counts as running for the wiring,
// so two new peers share one edge without rewiring); the sandboxes are
// built in parallel off the loop, and each is finished on the loop when
// its evBuilt arrives.
func (s *Supervisor) kick() {
	s.releaseCreated()
	var now, ahead []*launch
	for i := range s.table.Children {
		c := s.children[s.table.Children[i].Name]
		if c.status != StatusPending {
			continue
		}
		standby := c.hasStandby()
		if standby && !s.depsReady(c) {
			// Its standby's program waits for its config, and gets it only
			// once its dependencies are READY (a later kick).
			continue
		}
		c.gen++
		if c.gen > 1 {
			// Measured before the new incarnation runs (or, from a standby,
			// gets its config).
			if m := s.cfg.Measurer; m != nil {
				m.Restart(context.Background(), c.spec.Name, c.gen, s.computationID())
			}
		}
		c.startAt = time.Now()
		if standby {
			st := c.standby
			l, err := s.adopt(c, st)
			if err != nil {
				s.startFailed(c, err) // the standby stays for the next incarnation
				continue
			}
			c.standby = nil
			s.enter(c, StatusBuilding)
			s.log.Debug("adopting standby", "child", c.spec.Name, "sandbox", st.id, "generation", c.gen)
			s.launched(l)
			continue
		}
		l, err := s.prepare(c)
		if err != nil {
			s.startFailed(c, err)
			continue
		}
		s.enter(c, StatusBuilding)
		if l.exec = s.depsReady(c); l.exec {
			now = append(now, l)
		} else {
			ahead = append(ahead, l)
		}
	}
	// The sandboxes are built all at once (the runtime's forker threads
	// bound how many fork at a time; building two at a time in dependency
	// order was slower here: 193 against 176 ms median boot), those that
	// run at once first.
	for _, l := range append(now, ahead...) {
		s.building++
		s.wg.Go(func() {
			l.run(s.rt)
			s.post(evBuilt{l})
		})
	}
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

// built records a built sandbox: started (its program runs) or created (it
// waits for its dependencies); or the restart policy applies.
func (s *Supervisor) built(l *launch) {
	s.building--
	s.launched(l)
}

// launched finishes a launch whose sandbox is built (or adopted from the
// standby): the child is started, or created, or the restart policy applies.
func (s *Supervisor) launched(l *launch) {
	c := s.children[l.spec.Name]
	inc, err := s.finish(l)
	s.log.Debug("spawned", "child", c.spec.Name, "executed", l.exec, "took", time.Since(c.startAt))
	deferred := c.deferred
	c.deferred = nil
	if err != nil {
		// Its next incarnation gets fresh ends from the running peers.
		for _, r := range deferred {
			r.f.Close()
		}
		c.replace = false
		s.startFailed(c, err)
		return
	}
	c.inc = inc
	if l.exec {
		s.started(c)
	} else {
		s.enter(c, StatusCreated)
		s.log.Debug("child created; its program waits for its dependencies", "child", c.spec.Name, "generation", c.gen)
	}
	s.sendRewires(deferred) // after its Hello, which finish sent
	if c.replace {
		// A new computation came while it was built, with other settings.
		c.replace = false
		if !s.stopping {
			s.stopChild(c, stopReplaced)
			return
		}
	}
	s.wantKick = true // it may be created with its dependencies READY by now
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
			// Its exit follows, and the restart policy applies.
			s.log.Error("starting created child", "child", c.spec.Name, "err", errs[i])
			c.inc.sb.Kill()
			s.enter(c, StatusStarting)
			continue
		}
		s.started(c)
	}
}

// startFailed applies the restart policy to a child that could not be started.
func (s *Supervisor) startFailed(c *childState, err error) {
	s.log.Error("starting child", "child", c.spec.Name, "err", err)
	s.Events().Event("child.start_failed", "error", "child", c.spec.Name, "error", err.Error())
	s.afterExit(c)
}

// started records that c's program runs and arms its READY timeout.
func (s *Supervisor) started(c *childState) {
	c.serving = false
	c.failText = ""
	s.enter(c, StatusStarting)
	gen, name := c.gen, c.spec.Name
	c.setTimer(s.table.ReadyTimeout, func() { s.post(evReadyTimeout{name: name, gen: gen}) })
	s.log.Info("child started", "child", name, "pid", c.inc.sb.Pid(), "generation", gen)
	s.Events().Event("child.started", "ok", "child", name, "pid", c.inc.sb.Pid(), "generation", gen)
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

// current returns the child if an event is about its current incarnation.
func (s *Supervisor) current(name string, gen uint32) *childState {
	c := s.children[name]
	if c == nil || c.inc == nil || c.inc.gen != gen {
		return nil
	}
	return c
}

// reap releases an exited incarnation and says how it ended: replaced by
// a new computation, stopped at shutdown, or exited (a failure).
func (s *Supervisor) reap(c *childState, e evExit) {
	inc := c.inc
	c.inc = nil
	c.stopTimer()
	inc.ctl.Close()
	inc.cancel()
	if c.spec.Role == table.RoleAlgorithmSandboxes && s.cfg.Sandboxes != nil {
		s.cfg.Sandboxes.KillAll()
	}
	// Off the loop: every sandbox has its own id, so the next incarnation
	// need not wait for this one's cgroups and state to be removed.
	s.wg.Go(func() {
		t0 := time.Now()
		if err := inc.sb.Destroy(); err != nil {
			s.log.Warn("destroying sandbox", "child", inc.name, "err", err)
		}
		s.log.Debug("sandbox destroyed", "child", inc.name, "took", time.Since(t0))
	})
	s.cmds.fail(inc)
	how := exitText(e)
	attrs := []any{"child", c.spec.Name, "generation", inc.gen, "status", how, "uptime", time.Since(inc.started).Round(time.Millisecond)}
	c.lastExit = how
	if c.failText != "" {
		attrs = append(attrs, "reason", c.failText)
		c.lastExit += ": " + c.failText
	}
	switch {
	case c.stop == stopReplaced && !s.stopping:
		s.log.Info("child replaced", append(attrs, "by", string(c.stop))...)
		s.Events().Event("child.replaced", "ok", "child", c.spec.Name, "generation", inc.gen, "status", how, "reason", string(c.stop))
	case c.stop != "" || s.stopping:
		s.log.Info("child stopped", attrs...)
		s.Events().Event("child.stopped", "ok", "child", c.spec.Name, "generation", inc.gen, "status", how, "reason", string(stopShutdown))
	default:
		s.log.Error("child exited", append(attrs, "output", inc.tail.String())...)
		s.Events().Event("child.exited", "error", "child", c.spec.Name, "generation", inc.gen, "status", how, "reason", c.failText)
	}
	// The incarnation's goroutines end now that the channel is closed and
	// the process is gone; release waits for them (s.wg).
}

// exitText says how a sandbox's process ended.
func exitText(e evExit) string {
	how := "unknown"
	if e.err != nil {
		how = e.err.Error()
	} else if e.state != nil {
		how = e.state.String()
	}
	if e.oom {
		how += " (OOM-killed in its cgroup)"
	}
	return how
}

// afterExit decides what comes after a child's incarnation ended (or could
// not start): stopped at shutdown, started again for a new computation, or
// the restart policy.
func (s *Supervisor) afterExit(c *childState) {
	stop := c.stop
	c.stop = ""
	switch {
	case s.stopping:
		s.enter(c, StatusStopped)
		return
	case stop == stopReplaced:
		s.enter(c, StatusPending)
		s.wantKick = true
		return
	}
	delay, failed := c.restarts.Next(time.Now())
	if failed {
		s.enter(c, StatusFailed)
		s.log.Error("child failed: too many restarts; others keep running", "child", c.spec.Name,
			"max", s.table.Policy.MaxRestarts, "window", s.table.Policy.Window)
		s.Events().Event("child.failed", "error", "child", c.spec.Name, "restarts", c.restarts.Total())
		return
	}
	name, gen := c.spec.Name, c.gen
	s.log.Info("restarting child", "child", name, "in", delay.Round(time.Millisecond), "restart", c.restarts.Total())
	s.Events().Event("child.restarting", "ok", "child", name, "delay_ms", delay.Milliseconds(), "restart", c.restarts.Total())
	if delay == 0 {
		s.enter(c, StatusPending)
		s.wantKick = true
		return
	}
	s.enter(c, StatusBackoff)
	c.setTimer(delay, func() { s.post(evRestart{name: name, gen: gen}) })
}

// stopChild asks c to stop and arms its deadline (StopGrace, then SIGKILL
// and KillMargin). It returns at once; the exit comes as an event.
//
// Preconditions: c.inc != nil, c.status is Created, Starting or Ready.
func (s *Supervisor) stopChild(c *childState, why stopReason) {
	created := c.status == StatusCreated
	c.stop = why
	s.enter(c, StatusStopping)
	name, gen := c.spec.Name, c.inc.gen
	if created {
		// Only libcontainer's init runs there, holding nothing to save;
		// as PID 1 of its namespace it would answer SIGTERM with exit
		// status 2, which reads like a failure in the log.
		c.inc.sb.Kill()
		c.setTimer(s.cfg.KillMargin, func() { s.post(evKillDeadline{name: name, gen: gen}) })
		return
	}
	c.inc.ctl.Send(stopMessage(string(why)), nil)
	c.inc.sb.Signal(unix.SIGTERM)
	c.setTimer(s.table.StopGrace, func() { s.post(evStopDeadline{name: name, gen: gen}) })
}

// abandon gives up on a child that did not exit after SIGKILL: a shutdown
// goes on without it (release tries once more), a replaced child is
// started again beside it.
//
// What the incarnation held on the supervisor's side goes now (its control
// channel, its pending commands, its algorithm sandboxes: the next
// incarnation gets its own); its sandbox stays until its exit comes
// (reapAbandoned), or until release.
func (s *Supervisor) abandon(c *childState) {
	inc := c.inc
	s.log.Error("child did not die after SIGKILL", "child", c.spec.Name, "generation", inc.gen, "sandbox", inc.sb.ID())
	c.stopTimer()
	c.inc = nil
	inc.ctl.Close()
	inc.cancel()
	if c.spec.Role == table.RoleAlgorithmSandboxes && s.cfg.Sandboxes != nil {
		s.cfg.Sandboxes.KillAll()
	}
	s.cmds.fail(inc)
	inc.abandonedAt = time.Now()
	s.abandoned = append(s.abandoned, inc)
	s.afterExit(c)
}

// reapAbandoned destroys the sandbox of an abandoned incarnation whose
// exit came at last, and reports whether e was such an exit.
func (s *Supervisor) reapAbandoned(e evExit) bool {
	for i, inc := range s.abandoned {
		if inc.name != e.name || inc.sb != e.sb {
			continue
		}
		s.abandoned = slices.Delete(s.abandoned, i, i+1)
		if err := inc.sb.Destroy(); err != nil {
			s.log.Warn("destroying sandbox", "child", inc.name, "sandbox", inc.sb.ID(), "err", err)
		}
		s.log.Warn("abandoned child exited at last; its sandbox is destroyed", "child", inc.name, "generation", inc.gen,
			"sandbox", inc.sb.ID(), "status", exitText(e), "after_abandon", time.Since(inc.abandonedAt).Round(time.Millisecond))
		return true
	}
	return false
}

// beginShutdown starts stopping the children in reverse dependency order
// (stopUnneeded does each step as the previous ones exit).
func (s *Supervisor) beginShutdown() {
	s.stopping = true
	s.log.Info("shutting down")
	s.Events().Event("supervisor.shutdown", "ok")
	s.dropStandbys()
	for _, c := range s.children {
		switch c.status {
		case StatusPending, StatusBackoff, StatusFailed:
			c.stopTimer()
			s.enter(c, StatusStopped)
		case StatusStopping, StatusBuilding:
			// Its exit (or its build) is on the way.
		default:
			c.stopTimer()
		}
	}
}

// stopUnneeded stops, during shutdown, every running child that no
// running child depends on: ingress first, logfwd last. A child being
// built counts as running: it is stopped once built.
func (s *Supervisor) stopUnneeded() {
	var step []*childState
	for _, spec := range s.table.Children {
		c := s.children[spec.Name]
		if c.inc == nil || c.status == StatusStopping || s.needed(spec.Name) {
			continue
		}
		step = append(step, c)
	}
	for _, c := range step {
		if c.spec.Role == table.RoleLogSink && s.sink != nil {
			// Our own stream to the log sink must end, or its gRPC server
			// waits for it.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			s.sink.Close(ctx)
			cancel()
		}
		s.stopChild(c, stopShutdown)
	}
}

// needed reports whether a child that depends on name runs or is being built.
func (s *Supervisor) needed(name string) bool {
	for _, d := range s.table.Dependents(name) {
		if c := s.children[d]; c.inc != nil || c.status == StatusBuilding {
			return true
		}
	}
	return false
}

// allStopped reports whether nothing of any child runs or is being built.
func (s *Supervisor) allStopped() bool {
	if s.building > 0 || s.standbyBuilding {
		return false
	}
	for _, c := range s.children {
		if c.inc != nil || c.standby != nil {
			return false
		}
	}
	return true
}
