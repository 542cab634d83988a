package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

type sentOffset struct {
	offset uint64
	at     time.Time
}

// forwardLogs opens the log stream and copies logfwd's queue onto it until
// the stream fails (which ends the session) or ctx ends. A failure of
// logfwd (Read or Commit) does not end the session: the queue is read again
// from the last commit once logfwd is back.
func (l *Link) forwardLogs(ctx context.Context, client cvms.ServiceClient) error {
	st, err := client.Process(ctx)
	if err != nil {
		return fmt.Errorf("manager: opening log stream: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil) // runs before wg.Wait
	// Cocos's manager sends nothing useful here; reading detects a dead stream.
	wg.Go(func() {
		for {
			if _, err := st.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					err = errors.New("manager: log stream closed by the manager")
				}
				cancel(fmt.Errorf("manager: log stream: %w", err))
				return
			}
		}
	})

	var mu sync.Mutex
	var pending []sentOffset // guarded by mu; sent, not committed, in order
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
			cut := time.Now().Add(-l.cfg.CommitDelay)
			mu.Lock()
			n := 0
			for n < len(pending) && pending[n].at.Before(cut) {
				n++
			}
			var through uint64
			if n > 0 {
				through = pending[n-1].offset
			}
			mu.Unlock()
			if through == 0 {
				continue
			}
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := l.deps.Logs.Commit(cctx, &logs.CommitRequest{Through: through})
			ccancel()
			if err != nil {
				continue // retried on the next tick; at worst duplicates
			}
			mu.Lock()
			for len(pending) > 0 && pending[0].offset <= through {
				pending = pending[1:]
			}
			mu.Unlock()
			l.mu.Lock()
			l.committed = max(l.committed, through)
			l.stats.LogsCommitted = l.committed
			l.mu.Unlock()
		}
	})

	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		// Resume after what was sent on this stream, else after the commit.
		mu.Lock()
		after := uint64(0)
		if len(pending) > 0 {
			after = pending[len(pending)-1].offset
		}
		mu.Unlock()
		if after == 0 {
			l.mu.Lock()
			after = l.committed
			l.mu.Unlock()
		}
		rd, err := l.deps.Logs.Read(ctx, &logs.ReadRequest{After: after})
		if err == nil {
			err = l.copyEntries(ctx, rd, st, func(off uint64) {
				mu.Lock()
				pending = append(pending, sentOffset{off, time.Now()})
				mu.Unlock()
			})
			if err != nil && errors.Is(err, errStreamSend) {
				return err
			}
		}
		if ctx.Err() != nil {
			break
		}
		l.log.Warn("reading the log queue", "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (l *Link) copyEntries(ctx context.Context, rd logs.Collector_ReadClient, st cvms.Service_ProcessClient, sent func(uint64)) error {
	for {
		ents, err := rd.Recv()
		if err != nil {
			return fmt.Errorf("manager: reading logfwd: %w", err)
		}
		for _, e := range ents.GetEntries() {
			// A stored Record is also a valid ClientStreamMessage encoding:
			// logs.Record.log = 1 / event = 2 match agent_log = 1 / agent_event = 2.
			m := &cvms.ClientStreamMessage{}
			if err := proto.Unmarshal(e.GetRaw(), m); err != nil || (m.GetAgentLog() == nil && m.GetAgentEvent() == nil) {
				l.mu.Lock()
				l.stats.LogsSkipped++
				l.mu.Unlock()
				sent(e.GetOffset()) // nothing to deliver; let it be committed
				continue
			}
			if err := st.Send(m); err != nil {
				return fmt.Errorf("%w: %v", errStreamSend, err)
			}
			sent(e.GetOffset())
			l.mu.Lock()
			l.stats.LogsSent++
			l.mu.Unlock()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
