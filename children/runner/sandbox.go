package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
)

// sandboxClient asks the supervisor for algorithm sandboxes over the
// control channel and matches its replies to the requests.
type sandboxClient struct {
	send func(*control.Message, map[string]*os.File) error

	mu      sync.Mutex
	next    uint64                     // guarded by mu
	pending map[uint64]chan *sbStarted // guarded by mu
}

// sbStarted is a running sandbox as the runner holds it: it owns the fds.
type sbStarted struct {
	id             uint64
	sandboxID      string
	stdout, stderr *os.File
	status         *os.File
	err            error
}

func newSandboxClient(send func(*control.Message, map[string]*os.File) error) *sandboxClient {
	return &sandboxClient{send: send, pending: map[uint64]chan *sbStarted{}}
}

// handle consumes a SandboxReply (taking ownership of its files).
func (c *sandboxClient) handle(msg *control.Message, files map[string]*os.File) bool {
	rep := msg.GetSandboxReply()
	if rep == nil {
		return false
	}
	c.mu.Lock()
	ch := c.pending[rep.GetId()]
	delete(c.pending, rep.GetId())
	c.mu.Unlock()
	st := &sbStarted{id: rep.GetId(), sandboxID: rep.GetSandboxId(), stdout: files["stdout"], stderr: files["stderr"], status: files["status"]}
	for name, f := range files {
		if name != "stdout" && name != "stderr" && name != "status" {
			f.Close()
		}
	}
	switch {
	case rep.GetError() != "":
		st.err = errors.New(rep.GetError())
	case st.stdout == nil || st.stderr == nil || st.status == nil:
		st.err = fmt.Errorf("sandbox reply %d without its stdout, stderr and status fds", rep.GetId())
	}
	if ch == nil {
		st.close() // nobody waits (the run was cancelled): let it end
		return true
	}
	ch <- st
	return true
}

func (s *sbStarted) close() {
	for _, f := range []*os.File{s.stdout, s.stderr, s.status} {
		if f != nil {
			f.Close()
		}
	}
}

// start sends req and waits for the sandbox to run. If ctx ends first, the
// sandbox (if any is made later) is killed.
func (c *sandboxClient) start(ctx context.Context, req *control.SandboxRequest) (*sbStarted, error) {
	ch := make(chan *sbStarted, 1)
	c.mu.Lock()
	c.next++
	req.Id = c.next
	c.pending[req.Id] = ch
	c.mu.Unlock()
	if err := c.send(&control.Message{Body: &control.Message_SandboxRequest{SandboxRequest: req}}, nil); err != nil {
		c.mu.Lock()
		delete(c.pending, req.Id)
		c.mu.Unlock()
		return nil, fmt.Errorf("asking the supervisor for a sandbox: %w", err)
	}
	select {
	case st := <-ch:
		if st.err != nil {
			st.close()
			return nil, fmt.Errorf("supervisor refused the sandbox: %w", st.err)
		}
		return st, nil
	case <-ctx.Done():
		c.mu.Lock()
		_, stillPending := c.pending[req.Id]
		delete(c.pending, req.Id)
		c.mu.Unlock()
		c.kill(req.Id)
		if !stillPending {
			// The reply raced with the cancellation: it is in ch.
			st := <-ch
			st.close()
		}
		return nil, context.Cause(ctx)
	}
}

func (c *sandboxClient) kill(id uint64) {
	c.send(&control.Message{Body: &control.Message_SandboxKill{SandboxKill: &control.SandboxKill{Id: id}}}, nil)
}

// maxExitMessage bounds what is read from the status pipe.
const maxExitMessage = 64 << 10

// wait reads the SandboxExit (one message, then EOF) from the status fd.
func (s *sbStarted) wait() (*control.SandboxExit, error) {
	b, err := io.ReadAll(io.LimitReader(s.status, maxExitMessage))
	if err != nil {
		return nil, fmt.Errorf("reading the sandbox's status: %w", err)
	}
	var exit control.SandboxExit
	if err := proto.Unmarshal(b, &exit); err != nil {
		return nil, fmt.Errorf("decoding the sandbox's status: %w", err)
	}
	if !exit.GetComplete() {
		return nil, errors.New("the supervisor closed the sandbox's status without an exit record")
	}
	return &exit, nil
}
