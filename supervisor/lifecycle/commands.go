package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/proto/control"
)

// ErrChildGone is returned by Command when the child exited before replying.
var ErrChildGone = errors.New("supervisor: child exited before replying")

// ErrNotRunning is returned by Command when the child has no running
// incarnation (not started yet, or between restarts).
var ErrNotRunning = errors.New("not running")

// commands matches CommandReplies to the Commands waiting for them.
type commands struct {
	mu      sync.Mutex
	next    uint64                                     // guarded by mu
	waiting map[*incarnation]map[uint64]chan cmdResult // guarded by mu
}

type cmdResult struct {
	reply *control.CommandReply
	err   error
}

func newCommands() *commands { return &commands{waiting: map[*incarnation]map[uint64]chan cmdResult{}} }

func (c *commands) register(inc *incarnation) (uint64, chan cmdResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next++
	ch := make(chan cmdResult, 1)
	if c.waiting[inc] == nil {
		c.waiting[inc] = map[uint64]chan cmdResult{}
	}
	c.waiting[inc][c.next] = ch
	return c.next, ch
}

func (c *commands) forget(inc *incarnation, id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.waiting[inc], id)
}

func (c *commands) deliver(inc *incarnation, r *control.CommandReply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.waiting[inc][r.GetId()]; ok {
		ch <- cmdResult{reply: r}
		delete(c.waiting[inc], r.GetId())
	}
}

// fail ends every command waiting on inc.
func (c *commands) fail(inc *incarnation) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.waiting[inc] {
		ch <- cmdResult{err: ErrChildGone}
	}
	delete(c.waiting, inc)
}

// Command sends body to the named child's command handler over its control
// channel and returns the decoded reply body (nil if the handler returned
// none). A child that is not running, or exits first, is an error.
func (s *Supervisor) Command(ctx context.Context, child string, body proto.Message) (proto.Message, error) {
	a, err := anypb.New(body)
	if err != nil {
		return nil, fmt.Errorf("supervisor: encoding command for %s: %w", child, err)
	}
	var inc *incarnation
	if err := s.do(ctx, func() {
		if c := s.children[child]; c != nil {
			inc = c.inc
		}
	}); err != nil {
		return nil, err
	}
	if inc == nil {
		return nil, fmt.Errorf("supervisor: command to %s: %w", child, ErrNotRunning)
	}
	id, ch := s.cmds.register(inc)
	defer s.cmds.forget(inc, id)
	if err := inc.ctl.Send(&control.Message{Body: &control.Message_Command{Command: &control.Command{Id: id, Body: a}}}, nil); err != nil {
		return nil, fmt.Errorf("supervisor: command to %s: %w", child, err)
	}
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("supervisor: command to %s: %w", child, ctx.Err())
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("supervisor: command to %s: %w", child, r.err)
		}
		if r.reply.GetError() != "" {
			return nil, fmt.Errorf("supervisor: command to %s: %s", child, r.reply.GetError())
		}
		if r.reply.GetBody() == nil {
			return nil, nil
		}
		m, err := r.reply.GetBody().UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("supervisor: reply of %s: %w", child, err)
		}
		return m, nil
	}
}
