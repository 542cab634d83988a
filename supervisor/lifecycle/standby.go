package lifecycle

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/sandbox"
)

// standby is a child's next incarnation made ahead of need
// (table.ChildSpec.Standby): a sandbox built from the child's entry, as its
// own is, whose program runs and waits on its control channel for its
// Hello. Its edge ends are fresh socketpairs: the child has its ends, the
// supervisor holds the others until the standby is adopted, so nothing can
// reach it before. Adopting it (a restart, a new computation) is making its
// config, handing the held ends to the peers and sending the Hello: no
// sandbox is built and no program started on the way to READY.
//
// The loop owns it; its goroutines (the output reader, the waiter) only
// post events.
type standby struct {
	id string // the sandbox's id
	// sb is the built sandbox, nil while building. Loop only: run sets
	// started off the loop, and standbyBuilt copies it here once the
	// build's event has come (the race detector saw the loop read sb
	// while run wrote it).
	sb      *sandbox.Sandbox
	ctlMine *os.File
	// held are the peers' ends of its edges, by the child's fd name.
	held map[string]*os.File
	// fds are the child's fd numbers by name, for its config.
	fds  map[string]int32
	tail *tail
	// discard is set when the standby is no longer wanted while it is
	// built (shutdown): it is killed once built.
	discard bool

	// Until built (off the loop):
	spec     *sandbox.Spec
	ctlChild *os.File
	named    map[string]*os.File // the child's ends and extra fds
	extra    []*os.File
	pr, pw   *os.File
	started  *sandbox.Sandbox
	err      error
}

// evStandbyBuilt: a standby's sandbox was built and its program started
// (or could not be), off the loop.
type evStandbyBuilt struct {
	name string
	st   *standby
}

// evStandbyDue: a child has been READY for the table's StandbyAfter.
type evStandbyDue struct {
	name string
	gen  uint32
}

func (evStandbyBuilt) isEvent() {}
func (evStandbyDue) isEvent()   {}

// sandboxID is the id of a child's n-th sandbox: the child's name for the
// first, "<name>-<n>" for later ones, so that no two sandboxes of a child
// share an id or a cgroup: a standby (built while the current incarnation
// runs) and that incarnation; an incarnation that did not die after
// SIGKILL in time (it keeps its sandbox until its exit comes) and its
// replacement, which is never refused for it.
func sandboxID(name string, n int) string {
	if n <= 1 {
		return name
	}
	return fmt.Sprintf("%s-%d", name, n)
}

// armStandby schedules the build of c's standby StandbyAfter from now, if
// the child has one and the boot is over. Runs on the loop.
func (s *Supervisor) armStandby(c *childState) {
	if !c.spec.Standby || s.table.StandbyAfter <= 0 || !s.booted || s.stopping || c.standby != nil || c.inc == nil {
		return
	}
	if c.standbyTimer != nil {
		c.standbyTimer.Stop()
	}
	name, gen := c.spec.Name, c.inc.gen
	c.standbyTimer = time.AfterFunc(s.table.StandbyAfter, func() { s.post(evStandbyDue{name: name, gen: gen}) })
}

// standbyDue queues c's standby if c is still the READY incarnation the
// timer was armed for.
func (s *Supervisor) standbyDue(e evStandbyDue) {
	c := s.current(e.name, e.gen)
	if c == nil || c.status != StatusReady || c.standby != nil || s.stopping {
		return
	}
	c.standbyWanted = true
	s.buildStandbys()
}

// buildStandbys starts the build of the first wanted standby, in table
// order, unless one is being built: one at a time, so that standbys never
// take both cores from the children that run.
func (s *Supervisor) buildStandbys() {
	if s.standbyBuilding || s.stopping {
		return
	}
	for i := range s.table.Children {
		c := s.children[s.table.Children[i].Name]
		if !c.standbyWanted {
			continue
		}
		c.standbyWanted = false
		if c.standby != nil {
			continue
		}
		st, err := s.prepareStandby(c)
		if err != nil {
			s.log.Warn("preparing a standby", "child", c.spec.Name, "err", err)
			continue
		}
		c.standby = st
		s.standbyBuilding = true
		s.wg.Go(func() {
			st.run(s.rt)
			s.post(evStandbyBuilt{name: c.spec.Name, st: st})
		})
		return
	}
}

// prepareStandby makes a standby's control channel, edge ends, extra fds,
// output pipe and sandbox spec. Runs on the loop.
func (s *Supervisor) prepareStandby(c *childState) (st *standby, err error) {
	spec := c.spec
	c.sandboxes++
	st = &standby{id: sandboxID(spec.Name, c.sandboxes), held: map[string]*os.File{}, named: map[string]*os.File{}, tail: newTail(4096)}
	defer func() {
		if err != nil {
			st.release()
		}
	}()
	if st.ctlMine, st.ctlChild, err = ipc.Socketpair(unix.SOCK_SEQPACKET, spec.Name+":control"); err != nil {
		return nil, err
	}
	for name := range s.table.EdgesOf(spec.Name) {
		mine, theirs, err := ipc.Socketpair(unix.SOCK_SEQPACKET, spec.Name+":"+name)
		if err != nil {
			return nil, err
		}
		st.named[name], st.held[name] = mine, theirs
	}
	for _, fd := range spec.Fds {
		f, err := s.extraFD(spec.Name, fd)
		if err != nil {
			return nil, err
		}
		st.named[fd] = f
	}
	st.extra, st.fds = extraFiles(st.ctlChild, st.named)
	if st.pr, st.pw, err = os.Pipe(); err != nil {
		return nil, err
	}
	st.spec = s.sandboxSpec(spec, st.id)
	return st, nil
}

// run builds the sandbox and starts its program. Off the loop.
func (st *standby) run(rt *sandbox.Runtime) {
	st.started, st.err = rt.Start(st.spec, sandbox.IO{Stdout: st.pw, Stderr: st.pw, ExtraFiles: st.extra})
	st.pw.Close()
	st.ctlChild.Close()
	for _, f := range st.named {
		f.Close()
	}
	st.pw, st.ctlChild, st.named, st.extra = nil, nil, nil, nil
}

// release closes what the supervisor holds of a standby that will not be
// adopted (its sandbox, if any, is destroyed by whoever waited for it).
func (st *standby) release() {
	for _, f := range []*os.File{st.ctlMine, st.ctlChild, st.pr, st.pw} {
		if f != nil {
			f.Close()
		}
	}
	for _, m := range []map[string]*os.File{st.held, st.named} {
		for _, f := range m {
			f.Close()
		}
	}
	st.ctlMine, st.ctlChild, st.pr, st.pw, st.held, st.named = nil, nil, nil, nil, nil, nil
}

// standbyBuilt follows a built standby: its output and its exit. Runs on
// the loop.
func (s *Supervisor) standbyBuilt(e evStandbyBuilt) {
	s.standbyBuilding = false
	defer s.buildStandbys()
	c := s.children[e.name]
	st := e.st
	st.sb, st.started = st.started, nil
	if st.err != nil {
		s.log.Warn("building a standby", "child", e.name, "err", st.err)
		st.release()
		if c.standby == st {
			c.standby = nil
		}
		return
	}
	log := s.log.With("child", e.name, "standby", st.id)
	pr, sb := st.pr, st.sb
	st.pr = nil
	outDone := make(chan struct{})
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		defer close(outDone)
		readOutput(pr, st.tail, log)
	}()
	go func() {
		defer s.wg.Done()
		s.post(waitExit(e.name, sb, outDone))
	}()
	if st.discard || s.stopping {
		sb.Kill() // its exit comes to standbyExited
		return
	}
	s.log.Debug("standby ready", "child", e.name, "sandbox", st.id, "pid", sb.Pid())
	s.dirty = true
}

// standbyExited handles the exit of a standby's process before it was
// adopted: it is destroyed, and another is built StandbyAfter later.
func (s *Supervisor) standbyExited(c *childState, e evExit) {
	st := c.standby
	c.standby = nil
	s.dirty = true
	if err := st.sb.Destroy(); err != nil {
		s.log.Warn("destroying a standby", "child", c.spec.Name, "err", err)
	}
	st.release()
	if s.stopping {
		return
	}
	s.log.Warn("standby exited before it was used", "child", c.spec.Name, "sandbox", st.id, "status", exitText(e), "output", st.tail.String())
	if c.status == StatusReady {
		s.armStandby(c)
	}
}

// dropStandbys kills every standby (shutdown); their exits come back as
// events, and those being built are killed once built.
func (s *Supervisor) dropStandbys() {
	for _, c := range s.children {
		c.standbyWanted = false
		if c.standbyTimer != nil {
			c.standbyTimer.Stop()
		}
		if st := c.standby; st != nil {
			if st.sb == nil {
				st.discard = true
			} else {
				st.sb.Kill()
			}
		}
	}
}

// adopt turns c's standby into its next incarnation (c.gen): the config of
// this incarnation, and the held edge ends for the peers (wiring.adopt).
// Runs on the loop; the caller has checked that c's dependencies are READY.
func (s *Supervisor) adopt(c *childState, st *standby) (*launch, error) {
	settings, err := s.settingsOf(c)
	if err != nil {
		return nil, fmt.Errorf("settings of %s: %w", c.spec.Name, err)
	}
	cfg, err := s.childConfig(c, settings, st.fds)
	if err != nil {
		return nil, err
	}
	rewires := s.wiring.adopt(c.spec.Name, c.gen, st.held, s.liveness)
	st.held = nil
	return &launch{spec: c.spec, gen: c.gen, ctlMine: st.ctlMine, rewires: rewires, cfg: cfg, sb: st.sb, exec: true, standby: st}, nil
}

// hasStandby reports whether c's standby is built and waiting.
func (c *childState) hasStandby() bool { return c.standby != nil && c.standby.sb != nil }

// standbyOf returns the child whose standby runs in sb, or nil.
func (s *Supervisor) standbyOf(name string, sb *sandbox.Sandbox) *childState {
	c := s.children[name]
	if c == nil || c.standby == nil || c.standby.sb != sb || sb == nil {
		return nil
	}
	return c
}
