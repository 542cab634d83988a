package ipc

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by Listener.Accept and Dialer.Dial after Close.
var ErrClosed = errors.New("ipc: closed")

// ErrNoEdge is returned by Dialer.Dial when it has no usable edge and the
// context ends before the supervisor hands it one.
var ErrNoEdge = errors.New("ipc: no edge to dial")

// ProtocolError reports a packet that does not follow the control or edge protocol.
type ProtocolError struct {
	What string // what was wrong, e.g. "packet carries 2 fds, want 1"
}

func (e *ProtocolError) Error() string { return fmt.Sprintf("ipc: protocol error: %s", e.What) }
