package agent

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// eventQueue delivers state events in order and never drops one: Publish
// only appends to an unbounded in-memory queue (a handful of events per
// computation), and one goroutine hands them to the publisher, retrying
// while it refuses (logfwd's buffer full or down).
type eventQueue struct {
	pub logsink.Publisher

	mu      sync.Mutex
	cond    *sync.Cond
	pending []queuedEvent // guarded by mu
	closed  bool          // guarded by mu; exit once pending is empty
	abandon bool          // guarded by mu; stop retrying refused events
	done    chan struct{}
}

func newEventQueue(pub logsink.Publisher) *eventQueue {
	q := &eventQueue{pub: pub, done: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	go q.run()
	return q
}

// queuedEvent is an event as it was when it happened: the computation id
// and time are taken then, not when the publisher accepts it.
type queuedEvent struct {
	typ, status, compID string
	details             []byte // JSON object or nil
	at                  time.Time
}

// recordPutter is the part of *logsink.Sink that takes a whole record, so
// that the computation id and time of the event itself are kept.
type recordPutter interface {
	Put(*logs.Record) bool
}

// Publish queues one event of computation compID. details, if any, are
// key/value pairs sent as a JSON object (Cocos sends none).
func (q *eventQueue) Publish(compID, eventType, status string, details ...string) {
	var d []byte
	if len(details) > 1 {
		m := map[string]string{}
		for i := 0; i+1 < len(details); i += 2 {
			m[details[i]] = details[i+1]
		}
		d, _ = json.Marshal(m)
	}
	q.mu.Lock()
	q.pending = append(q.pending, queuedEvent{eventType, status, compID, d, time.Now()})
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
		for backoff := 10 * time.Millisecond; !q.deliver(ev); backoff = min(2*backoff, time.Second) {
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

// deliver hands ev to the publisher and reports whether it took it.
func (q *eventQueue) deliver(ev queuedEvent) bool {
	if p, ok := q.pub.(recordPutter); ok {
		return p.Put(&logs.Record{Body: &logs.Record_Event{Event: &cvms.AgentEvent{
			EventType: ev.typ, Status: ev.status, ComputationId: ev.compID, Details: ev.details, Timestamp: timestamppb.New(ev.at),
		}}})
	}
	if ev.details != nil {
		return q.pub.Event(ev.typ, ev.status, json.RawMessage(ev.details))
	}
	return q.pub.Event(ev.typ, ev.status)
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
