package lifecycle

import (
	"fmt"
	"slices"
)

// Status of a child, as children.json shows it.
type Status string

const (
	StatusPending  Status = "pending"  // no sandbox; started at the next kick
	StatusBuilding Status = "building" // its sandbox is being built, off the loop
	StatusCreated  Status = "created"  // sandbox built; its program waits for its dependencies to be READY
	StatusStarting Status = "starting" // its program runs, not yet READY
	StatusReady    Status = "ready"
	StatusStopping Status = "stopping" // the supervisor asked it to stop; waiting for its exit
	StatusBackoff  Status = "backoff"  // exited; restart scheduled
	StatusFailed   Status = "failed"   // too many restarts; left stopped until the next computation
	StatusStopped  Status = "stopped"  // stopped at shutdown
)

// transitions is the state machine of a child: every move its status can
// make, and what makes it. enter refuses (and logs) any other; the tests
// fail on one.
var transitions = []struct {
	from []Status
	to   Status
	on   string
}{
	{[]Status{StatusPending}, StatusBuilding,
		"kick: its fds and config are prepared on the loop, its sandbox is built off it"},
	{[]Status{StatusBuilding}, StatusCreated,
		"built while a dependency is not READY: its program waits"},
	{[]Status{StatusBuilding, StatusCreated}, StatusStarting,
		"its dependencies are READY: its program runs"},
	{[]Status{StatusStarting}, StatusReady,
		"it said READY"},
	{[]Status{StatusCreated, StatusStarting, StatusReady}, StatusStopping,
		"the supervisor stops it: shutdown, or a new computation replaces it"},
	{[]Status{StatusPending, StatusBuilding, StatusCreated, StatusStarting, StatusReady}, StatusBackoff,
		"it could not be started, or it exited: the restart policy waits"},
	{[]Status{StatusPending, StatusBuilding, StatusCreated, StatusStarting, StatusReady}, StatusFailed,
		"it could not be started, or it exited, too often: left stopped"},
	{[]Status{StatusPending, StatusBuilding, StatusCreated, StatusStarting, StatusReady}, StatusPending,
		"it could not be started, or it exited: restarted at once (a first restart)"},
	{[]Status{StatusBackoff}, StatusPending,
		"its back-off delay is over"},
	{[]Status{StatusStopping}, StatusPending,
		"it exited after being replaced: started again with the new computation"},
	{[]Status{StatusFailed}, StatusPending,
		"a new computation gives it another chance"},
	{[]Status{StatusStopping, StatusBuilding, StatusCreated, StatusStarting, StatusReady}, StatusStopped,
		"it exited (or its build failed) during shutdown"},
	{[]Status{StatusPending, StatusBackoff, StatusFailed}, StatusStopped,
		"shutdown, with nothing of it running"},
}

// allowed reports whether transitions has the move from → to.
func allowed(from, to Status) bool {
	for _, t := range transitions {
		if t.to == to && slices.Contains(t.from, from) {
			return true
		}
	}
	return false
}

// enter moves c to status to. It is the only place a child's status
// changes. A move the state machine does not have is a bug: it is logged
// and counted (and made, so that the supervisor goes on).
func (s *Supervisor) enter(c *childState, to Status) {
	if !allowed(c.status, to) {
		s.illegal++
		s.log.Error("supervisor: child status change not in the state machine", "child", c.spec.Name,
			"from", c.status, "to", to, "err", fmt.Sprintf("%s → %s", c.status, to))
	}
	c.status = to
	s.dirty = true
}
