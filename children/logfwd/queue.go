package logfwd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/children/child"
)

// QueueOptions bound a Queue. The zero value means the defaults.
type QueueOptions struct {
	// MaxBytes bounds the bytes on disk. When an append would exceed it, the
	// oldest segments are removed (even if not yet delivered) and the next
	// append carries one event saying how many records were dropped.
	// Zero means 256 MiB.
	MaxBytes int64
	// SegmentBytes is the size at which a segment is sealed and a new one
	// started. Zero means MaxBytes/8 (at least 64 KiB).
	SegmentBytes int64
}

// Damage describes bytes of a segment that were not valid records.
type Damage struct {
	Segment string // file name
	At      int64  // byte position of the first bad byte
	Bytes   int64  // how many bytes were skipped
	Tail    bool   // the damage ran to the end of the file (a torn write)
	// LostAfter and LostBefore bracket the offsets that the damaged bytes may
	// have held (exclusive); LostBefore is 0 when no valid record followed.
	LostAfter, LostBefore uint64
}

// Recovery is what Open found on disk.
type Recovery struct {
	Segments  int
	Records   uint64 // valid records kept
	Committed uint64 // the persisted commit offset
	Damage    []Damage
}

type segment struct {
	path  string
	first uint64 // offset in the file name: no record below it
	last  uint64 // highest offset in the segment; 0 if empty
	count uint64 // records in the segment
	size  int64  // durable, valid bytes
}

// Queue is logfwd's durable queue: append-only segment files in one
// directory, one fsync per group of appends, a commit offset below which
// records are deleted. Append is safe for concurrent use; it returns only
// after the records are on disk.
type Queue struct {
	dir  string
	opts QueueOptions
	reqs chan *appendReq

	wg   sync.WaitGroup
	stop chan struct{} // closed by Close once no append can be handed over any more

	// sendMu is held for reading while an append is handed to the
	// committer, and for writing by Close while it sets closing: after that
	// no append reaches reqs, so the committer's last drain answers all.
	sendMu  sync.RWMutex
	closing bool // guarded by sendMu

	mu        sync.Mutex
	segs      []*segment    // guarded by mu; oldest first; the last one is active
	active    *os.File      // guarded by mu; nil until the first append
	next      uint64        // guarded by mu; next offset to assign
	committed uint64        // guarded by mu
	total     int64         // guarded by mu; bytes across segs
	dropped   uint64        // guarded by mu; records removed by the size bound, not yet reported
	dropFirst uint64        // guarded by mu; offset range of those records
	dropLast  uint64        // guarded by mu
	changed   chan struct{} // guarded by mu; closed and replaced when durable data or segments change
	failed    error         // guarded by mu; a write error that left the active segment unusable
	writeErrs uint64        // guarded by mu; failed group commits (e.g. disk full)
}

type appendReq struct {
	stream   *Stream
	payloads [][]byte
	done     chan appendRes
}

// Stream orders the appends of one client: once one of them fails, every
// later one fails too, so a client that resends from the failed batch never
// finds later batches stored before it. Only the committer touches it.
type Stream struct {
	err error
}

type appendRes struct {
	last uint64
	err  error
}

// DropEvent makes the record that reports records removed by the size bound.
// logfwd sets it to an encoded AgentEvent; nil means no report record.
type DropEvent func(dropped, firstOffset, lastOffset uint64) []byte

// OpenQueue opens (creating if needed) the queue in dir, validating every
// segment: a torn or corrupt tail is truncated, damaged bytes inside a
// segment are skipped, and both are described in the Recovery. Its
// goroutine runs until Close.
func OpenQueue(dir string, opts QueueOptions, drop DropEvent) (*Queue, Recovery, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = max(opts.MaxBytes/8, 64<<10)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, Recovery{}, fmt.Errorf("logfwd: queue dir: %w", err)
	}
	q := &Queue{dir: dir, opts: opts, reqs: make(chan *appendReq, 64), stop: make(chan struct{}), changed: make(chan struct{})}
	rec, err := q.recover()
	if err != nil {
		return nil, rec, err
	}
	q.wg.Go(func() { q.committer(drop) })
	return q, rec, nil
}

func segName(first uint64) string { return fmt.Sprintf("seg-%020d.log", first) }

func (q *Queue) recover() (Recovery, error) {
	var rec Recovery
	committed, err := readCommit(filepath.Join(q.dir, "commit"))
	if err != nil {
		return rec, err
	}
	q.committed = committed
	rec.Committed = committed
	ents, err := os.ReadDir(q.dir)
	if err != nil {
		return rec, fmt.Errorf("logfwd: reading queue dir: %w", err)
	}
	var firsts []uint64
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "seg-") || !strings.HasSuffix(n, ".log") {
			continue
		}
		f, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "seg-"), ".log"), 10, 64)
		if err != nil {
			continue
		}
		firsts = append(firsts, f)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	var last uint64
	for _, first := range firsts {
		s := &segment{path: filepath.Join(q.dir, segName(first)), first: first}
		dmg, err := scanSegment(s, last)
		if err != nil {
			return rec, err
		}
		rec.Damage = append(rec.Damage, dmg...)
		if s.count == 0 || s.last <= committed {
			os.Remove(s.path)
			continue
		}
		last = s.last
		rec.Segments++
		rec.Records += s.count
		q.segs = append(q.segs, s)
		q.total += s.size
	}
	q.next = max(last, committed) + 1
	return rec, nil
}

// scanSegment validates s's file, fills in s, truncates a damaged tail and
// reports damage. prev is the highest offset of the segments before.
func scanSegment(s *segment, prev uint64) ([]Damage, error) {
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("logfwd: opening segment: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("logfwd: segment %s: %w", s.path, err)
	}
	var dmg []Damage
	var bad *Damage
	name := filepath.Base(s.path)
	err = scanFile(f, 0, st.Size(), func(off int64, offset uint64, _ []byte) bool {
		if offset <= prev || offset < s.first {
			// Out of order: treat as damage (it cannot be trusted).
			if bad == nil {
				dmg = append(dmg, Damage{Segment: name, At: off, LostAfter: prev})
				bad = &dmg[len(dmg)-1]
			}
			return true
		}
		if bad != nil {
			bad.LostBefore = offset
			bad = nil
		}
		prev = offset
		s.last = offset
		s.count++
		return true
	}, func(at, n int64, tail bool) {
		if bad != nil && bad.At+bad.Bytes == at {
			bad.Bytes += n
			bad.Tail = tail
			return
		}
		dmg = append(dmg, Damage{Segment: name, At: at, Bytes: n, Tail: tail, LostAfter: prev})
		bad = &dmg[len(dmg)-1]
	}, &s.size)
	if err != nil {
		return nil, fmt.Errorf("logfwd: scanning segment %s: %w", name, err)
	}
	if s.size < st.Size() {
		// Drop the damaged tail so appends never follow garbage.
		if err := f.Truncate(s.size); err != nil {
			return nil, fmt.Errorf("logfwd: truncating segment %s: %w", name, err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("logfwd: syncing segment %s: %w", name, err)
		}
	}
	return dmg, nil
}

// scanFile reads records in f from byte from to limit, calling rec for each
// valid one (it stops when rec returns false) and bad for damaged byte
// ranges (tail: the range runs to the end). It stores in *validEnd the end
// of the last valid record.
func scanFile(f *os.File, from, limit int64, rec func(at int64, offset uint64, payload []byte) bool, bad func(at, n int64, tail bool), validEnd *int64) error {
	return newFileScan(f, from, limit).scan(rec, bad, validEnd)
}

func newFileScan(f *os.File, from, limit int64) *fileScan {
	return &fileScan{f: f, pos: from, limit: limit, back: make([]byte, 256<<10)}
}

// scan is scanFile over the window's current position and limit.
func (s *fileScan) scan(rec func(at int64, offset uint64, payload []byte) bool, bad func(at, n int64, tail bool), validEnd *int64) error {
	*validEnd = s.pos
	for {
		if s.len() == 0 {
			ok, err := s.fill(1)
			if err != nil || !ok {
				return err
			}
		}
		offset, payload, n, derr := decodeRecord(s.data())
		switch {
		case derr == nil:
			if !rec(s.pos, offset, payload) {
				return nil
			}
			s.advance(n)
			*validEnd = s.pos
			continue
		case errors.Is(derr, errShort):
			need := headerSize
			if s.len() >= headerSize {
				need += int(binary.LittleEndian.Uint32(s.data()[4:]))
			}
			ok, err := s.fill(need)
			if err != nil {
				return err
			}
			if ok {
				continue
			}
			if i := resync(s.data()); i > 0 {
				// A damaged length field, not a torn tail: records follow.
				bad(s.pos, int64(i), false)
				s.advance(i)
				continue
			}
			bad(s.pos, int64(s.len()), true)
			return nil
		}
		// Damaged: skip to the next magic, which the loop then tries.
		if i := resync(s.data()); i > 0 {
			bad(s.pos, int64(i), false)
			s.advance(i)
			continue
		}
		if ok, err := s.fill(s.len() + 1); err != nil {
			return err
		} else if !ok {
			bad(s.pos, int64(s.len()), true)
			return nil
		}
		// Keep a few bytes: a magic may straddle the read boundary.
		if skip := s.len() - 3; skip > 0 {
			bad(s.pos, int64(skip), false)
			s.advance(skip)
		}
	}
}

// fileScan is a window of a file that is read up to limit.
type fileScan struct {
	f     *os.File
	pos   int64 // file position of back[r]
	limit int64
	back  []byte
	r, w  int // unread bytes are back[r:w]
}

func (s *fileScan) data() []byte  { return s.back[s.r:s.w] }
func (s *fileScan) len() int      { return s.w - s.r }
func (s *fileScan) advance(n int) { s.r += n; s.pos += int64(n) }
func (s *fileScan) end() int64    { return s.pos + int64(s.len()) }

// fill makes the window hold at least n bytes. It reports false when the
// file (up to limit) has fewer.
func (s *fileScan) fill(n int) (bool, error) {
	if s.len() >= n {
		return true, nil
	}
	if int64(n) > s.limit-s.pos {
		return false, nil
	}
	if len(s.back) < n {
		nb := make([]byte, max(n, 2*len(s.back)))
		s.w = copy(nb, s.data())
		s.r = 0
		s.back = nb
	} else if s.r > 0 {
		s.w = copy(s.back, s.data())
		s.r = 0
	}
	for s.len() < n {
		want := min(int64(len(s.back)-s.w), s.limit-s.end())
		m, err := s.f.ReadAt(s.back[s.w:s.w+int(want)], s.end())
		s.w += m
		if err == io.EOF || (err == nil && m == 0) {
			s.limit = s.end()
			return s.len() >= n, nil
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

func readCommit(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("logfwd: reading commit file: %w", err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		// A damaged commit file only costs duplicates: start from zero.
		return 0, nil
	}
	return binary.LittleEndian.Uint64(b), nil
}

func writeCommit(dir string, through uint64) error {
	b := binary.LittleEndian.AppendUint64(nil, through)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if err := child.WriteFileAtomic(filepath.Join(dir, "commit"), b, 0o600); err != nil {
		return fmt.Errorf("logfwd: writing commit file: %w", err)
	}
	return nil
}

// Append stores payloads (encoded logs.Records) and returns the offset of
// the last one once all are on disk. It fails without storing anything if
// the write or fsync fails (a full disk), or when ctx ends first; in the
// latter case the records may still be stored. After Close it fails with
// errQueueClosed.
func (q *Queue) Append(ctx context.Context, payloads [][]byte) (uint64, error) {
	r := q.AppendOn(ctx, nil, payloads)
	select {
	case res := <-r:
		return res.last, res.err
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

// AppendAsync is Append without waiting: the result arrives on the channel.
// Appends complete in the order they were made.
func (q *Queue) AppendAsync(payloads [][]byte) <-chan appendRes {
	return q.AppendOn(context.Background(), nil, payloads)
}

// AppendOn is AppendAsync for one client's stream of appends (nil: none):
// after a failed append, the stream's later appends fail without being
// stored. ctx bounds only the wait for room in the queue (the append then
// fails unstored); once handed over, an append is always answered: stored,
// failed, or refused by Close with errQueueClosed.
func (q *Queue) AppendOn(ctx context.Context, st *Stream, payloads [][]byte) <-chan appendRes {
	r := &appendReq{stream: st, payloads: payloads, done: make(chan appendRes, 1)}
	q.sendMu.RLock()
	defer q.sendMu.RUnlock()
	if q.closing {
		r.done <- appendRes{err: errQueueClosed}
		return r.done
	}
	select {
	case q.reqs <- r:
	case <-ctx.Done():
		r.done <- appendRes{err: context.Cause(ctx)}
	}
	return r.done
}

// groupBytes caps how much one group commit writes.
const groupBytes = 16 << 20

// committer is the only writer: it takes every waiting append, writes them
// with one write(2) and one fsync, then answers them all.
func (q *Queue) committer(drop DropEvent) {
	var buf []byte
	for {
		var group []*appendReq
		select {
		case r := <-q.reqs:
			group = append(group, r)
		case <-q.stop:
			q.refusePending()
			q.mu.Lock()
			if q.active != nil {
				q.active.Close()
				q.active = nil
			}
			q.mu.Unlock()
			return
		}
		size := 0
		for _, p := range group[0].payloads {
			size += headerSize + len(p)
		}
	more:
		for size < groupBytes {
			select {
			case r := <-q.reqs:
				group = append(group, r)
				for _, p := range r.payloads {
					size += headerSize + len(p)
				}
			default:
				break more
			}
		}
		// Appends of a stream that already failed are refused unwritten.
		live := group[:0]
		for _, r := range group {
			if r.stream != nil && r.stream.err != nil {
				r.done <- appendRes{err: fmt.Errorf("logfwd: an earlier batch of this stream failed: %w", r.stream.err)}
				continue
			}
			live = append(live, r)
		}
		group = live
		if len(group) == 0 {
			continue
		}
		var err error
		var lasts []uint64
		buf, lasts, err = q.write(buf[:0], group, size, drop)
		for _, r := range group {
			if err != nil && r.stream != nil {
				r.stream.err = err
			}
		}
		for i, r := range group {
			if err != nil {
				r.done <- appendRes{err: err}
			} else {
				r.done <- appendRes{last: lasts[i]}
			}
		}
		if cap(buf) > 2*groupBytes {
			buf = nil
		}
	}
}

func (q *Queue) write(buf []byte, group []*appendReq, size int, drop DropEvent) ([]byte, []uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	// After a failed write the active segment was truncated back to its
	// durable size and is reused as is: a new segment would take the same
	// name (the next offset did not move) and its removal would unlink the
	// live file.
	q.failed = nil
	q.enforceBoundLocked(int64(size + headerSize + 256))
	if err := q.rollLocked(int64(size)); err != nil {
		return buf, nil, err
	}
	next := q.next
	if q.dropped > 0 && drop != nil {
		if p := drop(q.dropped, q.dropFirst, q.dropLast); p != nil {
			buf = appendRecord(buf, next, p)
			next++
		}
	}
	lasts := make([]uint64, len(group))
	count := uint64(0)
	for i, r := range group {
		for _, p := range r.payloads {
			buf = appendRecord(buf, next, p)
			next++
			count++
		}
		lasts[i] = next - 1
	}
	seg := q.segs[len(q.segs)-1]
	// Write and fsync without the lock: readers only look up to seg.size.
	q.mu.Unlock()
	_, werr := q.active.Write(buf)
	if werr == nil {
		werr = unix.Fdatasync(int(q.active.Fd()))
	}
	q.mu.Lock()
	if werr != nil {
		// Take back whatever part was written: nothing is acknowledged.
		q.active.Truncate(seg.size)
		q.active.Seek(seg.size, io.SeekStart)
		q.failed = werr
		q.writeErrs++
		return buf, nil, fmt.Errorf("logfwd: writing segment %s: %w", filepath.Base(seg.path), werr)
	}
	q.dropped, q.dropFirst, q.dropLast = 0, 0, 0
	seg.size += int64(len(buf))
	seg.count += next - q.next
	seg.last = next - 1
	q.total += int64(len(buf))
	q.next = next
	q.notifyLocked()
	return buf, lasts, nil
}

// rollLocked makes sure there is an active segment with room for size bytes.
// Preconditions: mu held.
func (q *Queue) rollLocked(size int64) error {
	if q.active != nil {
		seg := q.segs[len(q.segs)-1]
		if seg.size == 0 || seg.size+size <= q.opts.SegmentBytes {
			return nil
		}
		q.active.Close()
		q.active = nil
	}
	s := &segment{path: filepath.Join(q.dir, segName(q.next)), first: q.next}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("logfwd: creating segment: %w", err)
	}
	// The new file's name must be durable before any record in it is acked.
	if d, err := os.Open(q.dir); err == nil {
		d.Sync()
		d.Close()
	}
	q.active = f
	q.segs = append(q.segs, s)
	q.notifyLocked()
	return nil
}

// enforceBoundLocked removes the oldest sealed segments until size more bytes
// fit under MaxBytes, counting the undelivered records it removes.
// Preconditions: mu held.
func (q *Queue) enforceBoundLocked(size int64) {
	for q.total+size > q.opts.MaxBytes && len(q.segs) > 1 {
		s := q.segs[0]
		from := max(s.first, q.committed+1)
		if s.last >= from {
			q.dropped += min(s.last-from+1, s.count)
			if q.dropFirst == 0 {
				q.dropFirst = from
			}
			q.dropLast = s.last
		}
		os.Remove(s.path)
		q.total -= s.size
		q.segs = q.segs[1:]
	}
}

// Commit records that everything through offset has been delivered and
// removes the segments that hold only such records.
func (q *Queue) Commit(through uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if through >= q.next {
		through = q.next - 1
	}
	if through <= q.committed {
		return nil
	}
	// Delete first: it frees space when the disk is full, and losing the
	// commit file afterwards only costs duplicates, never records.
	q.committed = through
	for len(q.segs) > 1 && q.segs[0].last <= through {
		os.Remove(q.segs[0].path)
		q.total -= q.segs[0].size
		q.segs = q.segs[1:]
	}
	q.notifyLocked()
	return writeCommit(q.dir, through)
}

// Committed returns the commit offset.
func (q *Queue) Committed() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.committed
}

// Stats returns the next offset to assign and the bytes on disk.
func (q *Queue) Stats() (next uint64, bytes int64, segments int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.next, q.total, len(q.segs)
}

// WriteErrors returns how many group commits failed (nothing of them was
// acknowledged), e.g. because the disk was full.
func (q *Queue) WriteErrors() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.writeErrs
}

// notifyLocked wakes readers. Preconditions: mu held.
func (q *Queue) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// refusePending answers every append still queued at stop with
// errQueueClosed. Only the committer calls it, after Close set closing, so
// no append can arrive after it.
func (q *Queue) refusePending() {
	for {
		select {
		case r := <-q.reqs:
			r.done <- appendRes{err: errQueueClosed}
		default:
			return
		}
	}
}

// Close stops the committer. A group being written finishes and is
// answered; appends still queued, and every later one, fail with
// errQueueClosed. Idempotent.
func (q *Queue) Close() error {
	q.sendMu.Lock()
	first := !q.closing
	q.closing = true
	q.sendMu.Unlock()
	if first {
		close(q.stop)
	}
	q.wg.Wait()
	return nil
}
