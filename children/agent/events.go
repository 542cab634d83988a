package agent

import (
	"context"
	"sync"
	"time"

	"github.com/cvmd/cvmd/logsink"
)

// eventQueue delivers state events in order and never drops one: Publish
// only appends to an unbounded in-memory queue (a handful of events per
// computation), and one goroutine hands them to the publisher, retrying
// while it refuses (logfwd's buffer full or down).
type eventQueue struct {
	pub logsink.Publisher

	mu      sync.Mutex
	cond    *sync.Cond
	pending [][2]string // guarded by mu
	closed  bool        // guarded by mu; exit once pending is empty
	abandon bool        // guarded by mu; stop retrying refused events
	done    chan struct{}
}

func newEventQueue(pub logsink.Publisher) *eventQueue {
	q := &eventQueue{pub: pub, done: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	go q.run()
	return q
}

// Publish queues one event.
func (q *eventQueue) Publish(eventType, status string) {
	q.mu.Lock()
	q.pending = append(q.pending, [2]string{eventType, status})
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *eventQueue) run() {
	defer close(q.done)
	for {
		q.mu.Lock()
		for len(q.pending) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.pending) == 0 {
			q.mu.Unlock()
			return
		}
		ev := q.pending[0]
		q.mu.Unlock()
		for backoff := 10 * time.Millisecond; !q.pub.Event(ev[0], ev[1]); backoff = min(2*backoff, time.Second) {
			q.mu.Lock()
			abandon := q.abandon
			q.mu.Unlock()
			if abandon {
				break
			}
			time.Sleep(backoff)
		}
		q.mu.Lock()
		q.pending = q.pending[1:]
		q.mu.Unlock()
	}
}

// Close delivers what is queued (retrying for at most until ctx ends) and
// stops the goroutine. Idempotent.
func (q *eventQueue) Close(ctx context.Context) {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
	select {
	case <-q.done:
	case <-ctx.Done():
		q.mu.Lock()
		q.abandon = true
		q.mu.Unlock()
		<-q.done
	}
}
