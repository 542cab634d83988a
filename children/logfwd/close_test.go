package logfwd

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvmd/cvmd/internal/testutil"
)

// TestCloseAnswersEveryAppend: appends made while the queue closes, and
// after, all return: each is either acknowledged (and then on disk after a
// reopen) or refused with errQueueClosed. None is left waiting.
func TestCloseAnswersEveryAppend(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	q, _ := openQ(t, dir, QueueOptions{})
	const writers, per = 8, 40
	type result struct {
		line int
		res  appendRes
	}
	results := make(chan result, writers*per)
	// Close once some appends are acknowledged, while the rest are queued.
	var answered atomic.Int32
	someAcked := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				n := w*per + i
				res := <-q.AppendAsync([][]byte{line(n)})
				results <- result{n, res}
				if answered.Add(1) == writers*per/4 {
					close(someAcked)
				}
			}
		})
	}
	<-someAcked
	q.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("appends still waiting 10 s after Close: %d of %d answered", len(results), writers*per)
	}
	close(results)
	acked := map[int]bool{}
	refused := 0
	for r := range results {
		switch {
		case r.res.err == nil:
			acked[r.line] = true
		case errors.Is(r.res.err, errQueueClosed):
			refused++
		default:
			t.Errorf("line %d: unexpected error %v", r.line, r.res.err)
		}
	}
	if _, err := q.Append(context.Background(), [][]byte{line(-1)}); !errors.Is(err, errQueueClosed) {
		t.Errorf("append after Close: %v, want errQueueClosed", err)
	}
	q2, _ := openQ(t, dir, QueueOptions{})
	defer q2.Close()
	stored := map[int]bool{}
	for _, e := range readAll(t, q2, 0) {
		if n, ok := lineNo(t, e.Payload); ok {
			stored[n] = true
		}
	}
	for n := range acked {
		if !stored[n] {
			t.Errorf("line %d was acknowledged but is not in the queue after reopen", n)
		}
	}
	t.Logf("%d appends acknowledged, %d refused as closed", len(acked), refused)
}

// TestAppendHonoursContext: an append whose context ends while it waits for
// room in the queue returns the context's error.
func TestAppendHonoursContext(t *testing.T) {
	testutil.CheckLeaks(t)
	q, _ := openQ(t, t.TempDir(), QueueOptions{})
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Append(ctx, [][]byte{line(1)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with an ended context: %v, want context.Canceled", err)
	}
}
