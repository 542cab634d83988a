package lifecycle

import (
	"os"

	"github.com/cvmd/cvmd/proto/control"
)

// event is something a child's goroutines or a timer tell the loop.
type event interface{ isEvent() }

type evReady struct {
	name string
	gen  uint32
}
type evStartFailed struct {
	name string
	gen  uint32
	text string
}
type evGarbage struct {
	name string
	gen  uint32
	err  error
}
type evExit struct {
	name  string
	gen   uint32
	state *os.ProcessState
	err   error
	oom   bool
}
type evReadyTimeout struct {
	name string
	gen  uint32
}
type evRestart struct {
	name string
	gen  uint32
}
type evStable struct {
	name string
	gen  uint32
}

type evServing struct {
	name string
	gen  uint32
	ok   bool
	code string
}

func (evServing) isEvent()      {}
func (evReady) isEvent()        {}
func (evStartFailed) isEvent()  {}
func (evGarbage) isEvent()      {}
func (evExit) isEvent()         {}
func (evReadyTimeout) isEvent() {}
func (evRestart) isEvent()      {}
func (evStable) isEvent()       {}

type stopMsg struct{ reason string }

func (m *stopMsg) msg() *control.Message {
	return &control.Message{Body: &control.Message_Stop{Stop: &control.Stop{Reason: m.reason}}}
}
