package ipc

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
)

var errEOF = errors.New("ipc: peer closed the channel")

// IsEOF reports whether err means the peer closed its end.
func IsEOF(err error) bool { return errors.Is(err, errEOF) }

// Control is one end of a control channel. Send and Recv may be called from
// different goroutines; each is serialised on its own.
type Control struct {
	sock   *os.File
	sendMu sync.Mutex
	recvMu sync.Mutex
	buf    []byte
}

// NewControl wraps a SOCK_SEQPACKET end. It takes ownership of sock.
func NewControl(sock *os.File) *Control {
	return &Control{sock: sock, buf: make([]byte, MaxPacket)}
}

// Send writes msg with files attached, naming them in msg.FdNames (which it
// overwrites). It does not take ownership of the files: the caller closes its
// copies when it no longer needs them.
func (c *Control) Send(msg *control.Message, files map[string]*os.File) error {
	msg.FdNames = msg.FdNames[:0]
	list := make([]*os.File, 0, len(files))
	for name, f := range files {
		msg.FdNames = append(msg.FdNames, name)
		list = append(list, f)
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		return fmt.Errorf("ipc: encoding control message: %w", err)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return sendPacket(c.sock, b, list)
}

// Recv reads the next message and the fds that came with it, by name. The
// caller owns the returned files. A malformed packet is a *ProtocolError; its
// fds are closed.
func (c *Control) Recv() (*control.Message, map[string]*os.File, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	n, fds, err := recvPacket(c.sock, c.buf)
	if err != nil {
		return nil, nil, err
	}
	msg := new(control.Message)
	if err := proto.Unmarshal(c.buf[:n], msg); err != nil {
		closeFDs(fds)
		return nil, nil, &ProtocolError{What: fmt.Sprintf("undecodable control message: %v", err)}
	}
	if len(msg.GetFdNames()) != len(fds) {
		closeFDs(fds)
		return nil, nil, &ProtocolError{What: fmt.Sprintf("message names %d fds, packet carries %d", len(msg.GetFdNames()), len(fds))}
	}
	if msg.GetBody() == nil {
		closeFDs(fds)
		return nil, nil, &ProtocolError{What: "control message without a known body"}
	}
	seen := make(map[string]bool, len(fds))
	for _, name := range msg.GetFdNames() {
		if seen[name] {
			closeFDs(fds)
			return nil, nil, &ProtocolError{What: fmt.Sprintf("fd name %q attached twice", name)}
		}
		seen[name] = true
	}
	named := make(map[string]*os.File, len(fds))
	for i, name := range msg.GetFdNames() {
		named[name] = os.NewFile(uintptr(fds[i]), name)
	}
	return msg, named, nil
}

// Close closes the channel.
func (c *Control) Close() error { return c.sock.Close() }

// File returns the underlying socket (for ExtraFiles); Control still owns it.
func (c *Control) File() *os.File { return c.sock }
