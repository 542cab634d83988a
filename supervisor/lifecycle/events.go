package lifecycle

import (
	"os"

	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/sandbox"
)

// event is something a child's goroutines or a timer tell the loop. Every
// event names the child and the generation it is about; one about an
// incarnation that is gone is dropped.
type event interface{ isEvent() }

// evBuilt: a launch's sandbox was built (or could not be), off the loop.
type evBuilt struct{ l *launch }

// evReady: the child said READY.
type evReady struct {
	name string
	gen  uint32
}

// evStartFailed: the child said why it cannot start (it exits next).
type evStartFailed struct {
	name string
	gen  uint32
	text string
}

// evGarbage: the child broke the control protocol.
type evGarbage struct {
	name string
	gen  uint32
	err  error
}

// evExit: the process of one of the child's sandboxes is gone: its current
// incarnation's, its standby's, or an abandoned one's (told apart by sb).
type evExit struct {
	name  string
	sb    *sandbox.Sandbox
	state *os.ProcessState
	err   error
	oom   bool
}

// evReadyTimeout: the child did not say READY within the table's ReadyTimeout.
type evReadyTimeout struct {
	name string
	gen  uint32
}

// evRestart: a back-off delay is over.
type evRestart struct {
	name string
	gen  uint32
}

// evStable: the child stayed READY for the policy's window.
type evStable struct {
	name string
	gen  uint32
}

// evStopDeadline: a child asked to stop did not exit within StopGrace.
type evStopDeadline struct {
	name string
	gen  uint32
}

// evKillDeadline: a SIGKILLed child did not exit within killMargin.
type evKillDeadline struct {
	name string
	gen  uint32
}

// evServing: the result of the supervisor's gRPC call over its edge.
type evServing struct {
	name string
	gen  uint32
	ok   bool
	code string
}

func (evBuilt) isEvent()        {}
func (evServing) isEvent()      {}
func (evReady) isEvent()        {}
func (evStartFailed) isEvent()  {}
func (evGarbage) isEvent()      {}
func (evExit) isEvent()         {}
func (evReadyTimeout) isEvent() {}
func (evRestart) isEvent()      {}
func (evStable) isEvent()       {}
func (evStopDeadline) isEvent() {}
func (evKillDeadline) isEvent() {}

func stopMessage(reason string) *control.Message {
	return &control.Message{Body: &control.Message_Stop{Stop: &control.Stop{Reason: reason}}}
}
