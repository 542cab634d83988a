package logfwd

import (
	"context"
	"fmt"
	"os"
	"slices"
)

// Entry is one record read back from the queue.
type Entry struct {
	Offset  uint64
	Payload []byte
}

// Reader tails a Queue in offset order. It reads only durable bytes, follows
// segment rolls, skips damaged bytes, and jumps over segments removed by the
// size bound (the offsets it never saw are the records dropped). A Reader is
// used by one goroutine.
type Reader struct {
	q      *Queue
	cursor uint64 // highest offset delivered
	done   uint64 // segments with first ≤ done were read to their end
	seg    *segment
	f      *os.File
	win    *fileScan
}

// NewReader returns a Reader of the records with offset > after; after == 0
// means after the last commit.
func (q *Queue) NewReader(after uint64) *Reader {
	if after == 0 {
		after = q.Committed()
	}
	return &Reader{q: q, cursor: after}
}

// Close releases the Reader's file.
func (r *Reader) Close() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	r.seg = nil
}

// Next returns the next records (at most maxEntries, about maxBytes),
// waiting until there is at least one or ctx ends.
func (r *Reader) Next(ctx context.Context, maxEntries, maxBytes int) ([]Entry, error) {
	for {
		q := r.q
		q.mu.Lock()
		var s *segment
		sealed := false
		for i, c := range q.segs {
			if c.first > r.done && c.count > 0 && c.last > r.cursor {
				s, sealed = c, i < len(q.segs)-1
				break
			}
		}
		var limit int64
		if s != nil {
			limit = s.size
		}
		changed := q.changed
		q.mu.Unlock()
		if s == nil {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if s != r.seg {
			r.Close()
			f, err := os.Open(s.path)
			if err != nil {
				if os.IsNotExist(err) {
					// Removed meanwhile (committed or dropped): the list
					// changed, or will; never spin.
					select {
					case <-changed:
						continue
					case <-ctx.Done():
						return nil, ctx.Err()
					}
				}
				return nil, fmt.Errorf("logfwd: opening segment: %w", err)
			}
			r.seg, r.f, r.win = s, f, nil
		}
		if r.win == nil {
			r.win = newFileScan(r.f, 0, limit)
		}
		r.win.limit = limit
		var out []Entry
		size := 0
		var end int64
		err := r.win.scan(func(_ int64, offset uint64, payload []byte) bool {
			if len(out) >= maxEntries || size >= maxBytes {
				return false
			}
			if offset > r.cursor {
				out = append(out, Entry{Offset: offset, Payload: slices.Clone(payload)})
				size += len(payload)
				r.cursor = offset
			}
			return true
		}, func(int64, int64, bool) {}, &end)
		if err != nil {
			return nil, fmt.Errorf("logfwd: reading segment: %w", err)
		}
		if len(out) > 0 {
			return out, nil
		}
		if sealed {
			r.done = s.first
			r.Close()
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
