// Package logsink is the client side of cvmd's log path: every child and the
// supervisor use it to hand log records and events to the logfwd child, which
// makes them durable before the manager sees them.
//
// A Sink keeps a bounded local buffer (bytes, not records) and one goroutine
// that batches the buffer into logs.Collector/Push streams over an
// *ipc.Dialer, keeping each batch until logfwd acknowledges that it is on
// disk. When logfwd restarts, the unacknowledged batches are sent again over
// the new edge (so logfwd may see a batch twice; it does not deduplicate).
//
// The caller is never blocked for long: Put waits at most Options.MaxWait for
// space and then drops the record; while it is dropping, later Puts that find
// no space drop at once instead of waiting again. Drops are never silent:
// they are counted (Stats) and, as soon as space returns, one WARN record
// says how many were lost.
//
// logsink does not write to files or stderr on its own and does not format
// anything for humans beyond the message text (structured attributes are kept
// in the message as key=value pairs, since Cocos's AgentLog has no attribute
// field). Anyone may import it; it imports ipc and proto only.
package logsink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// Options tune a Sink. The zero value is usable.
type Options struct {
	// Originator names the process in events (AgentEvent.originator): the
	// child's name, or "supervisor". Empty means "unknown".
	Originator string
	// ComputationID is stamped on every record that does not carry one.
	// It can be changed later with SetComputationID.
	ComputationID string
	// BufferBytes bounds the memory held for records not yet acknowledged by
	// logfwd. Zero means 4 MiB.
	BufferBytes int
	// MaxWait is how long Put may block waiting for buffer space before it
	// drops the record. Zero means 50 ms; a negative value means never wait.
	MaxWait time.Duration
	// BatchBytes is the target size of one Push batch. Zero means 256 KiB.
	BatchBytes int
	// Window is how many batches may be in flight (sent, not yet acked).
	// Zero means 4.
	Window int
}

func (o *Options) fill() {
	if o.Originator == "" {
		o.Originator = "unknown"
	}
	if o.BufferBytes <= 0 {
		o.BufferBytes = 4 << 20
	}
	if o.MaxWait == 0 {
		o.MaxWait = 50 * time.Millisecond
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 256 << 10
	}
	if o.Window <= 0 {
		o.Window = 4
	}
}

// Stats are a Sink's counters since New.
type Stats struct {
	Accepted uint64 // records taken into the buffer
	Acked    uint64 // records logfwd acknowledged as durable
	Dropped  uint64 // records refused because the buffer stayed full
	Resent   uint64 // records sent again after a stream broke
}

type item struct {
	raw  []byte // the encoded logs.Record
	size int
}

type batch struct {
	seq   uint64
	items []item
	bytes int
}

// Sink buffers records and pushes them to logfwd. Its methods are safe for
// concurrent use.
type Sink struct {
	opt    Options
	dialer *ipc.Dialer
	conn   *grpc.ClientConn

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	compID   string        // guarded by mu
	pending  []item        // guarded by mu; not yet sent, in order
	inflight []*batch      // guarded by mu; sent on the current stream, not yet acked
	used     int           // guarded by mu; bytes of pending + inflight
	unrep    uint64        // guarded by mu; drops not yet reported by a record
	stats    Stats         // guarded by mu
	space    chan struct{} // guarded by mu; closed and replaced when space frees
	work     chan struct{} // guarded by mu; closed and replaced when records arrive
	idle     chan struct{} // guarded by mu; closed and replaced when the buffer empties
	closed   bool          // guarded by mu
}

// New starts a Sink that pushes to the logfwd at the other end of d. It does
// not take ownership of d (the child runtime owns its dialers).
func New(d *ipc.Dialer, opt Options) (*Sink, error) {
	opt.fill()
	conn, err := ipc.GRPCClient(d)
	if err != nil {
		return nil, fmt.Errorf("logsink: client for logfwd: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sink{
		opt: opt, dialer: d, conn: conn, cancel: cancel, compID: opt.ComputationID,
		space: make(chan struct{}), work: make(chan struct{}), idle: make(chan struct{}),
	}
	s.wg.Go(func() { s.run(ctx) })
	return s, nil
}

// SetComputationID changes the id stamped on records that carry none.
func (s *Sink) SetComputationID(id string) {
	s.mu.Lock()
	s.compID = id
	s.mu.Unlock()
}

// ComputationID returns the id stamped on records that carry none.
func (s *Sink) ComputationID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compID
}

// Stats returns the counters.
func (s *Sink) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Put queues rec, waiting at most Options.MaxWait for space. It reports
// whether the record was accepted; a refused record is counted as dropped.
// Put takes ownership of rec.
func (s *Sink) Put(rec *logs.Record) bool {
	s.stamp(rec)
	clip(rec)
	var raw []byte
	if l := rec.GetLog(); l != nil {
		raw = encodeLog(l)
	} else {
		var err error
		if raw, err = proto.Marshal(rec); err != nil {
			// Only invalid UTF-8 in a string field gets here: keep the
			// record, with the text made valid, rather than lose it.
			raw = mustMarshalLossy(rec)
		}
	}
	return s.putRaw(raw)
}

// putRaw queues an encoded Record; see Put.
func (s *Sink) putRaw(raw []byte) bool {
	size := len(raw) + 8
	var deadline *time.Timer
	defer func() {
		if deadline != nil {
			deadline.Stop()
		}
	}()
	s.mu.Lock()
	for {
		if s.closed {
			s.stats.Dropped++
			s.mu.Unlock()
			return false
		}
		// A record larger than the whole buffer is let in when the buffer is
		// empty: refusing it forever would be a silent loss.
		if s.used+size <= s.opt.BufferBytes || s.used == 0 {
			break
		}
		// Already dropping (space has not come back since): do not make
		// every caller wait MaxWait again.
		if s.opt.MaxWait < 0 || s.unrep > 0 {
			return s.dropLocked()
		}
		if deadline == nil {
			deadline = time.NewTimer(s.opt.MaxWait)
		}
		space := s.space
		s.mu.Unlock()
		select {
		case <-space:
			s.mu.Lock()
		case <-deadline.C:
			s.mu.Lock()
			if s.used+size <= s.opt.BufferBytes {
				continue
			}
			return s.dropLocked()
		}
	}
	if s.unrep > 0 {
		// Space is back: say how many were lost before the record that fits.
		note := &logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{
			Message:       fmt.Sprintf("logsink: dropped %d records: buffer of %d bytes full (%s)", s.unrep, s.opt.BufferBytes, s.opt.Originator),
			Level:         "WARN",
			ComputationId: s.compID,
			Timestamp:     timestamppb.Now(),
		}}}
		s.unrep = 0
		nraw, _ := proto.Marshal(note)
		s.appendLocked(item{raw: nraw, size: len(nraw) + 8})
	}
	s.appendLocked(item{raw: raw, size: size})
	s.stats.Accepted++
	s.mu.Unlock()
	return true
}

// dropLocked counts a refused record. Preconditions: mu held; it unlocks mu.
func (s *Sink) dropLocked() bool {
	s.stats.Dropped++
	s.unrep++
	s.mu.Unlock()
	return false
}

// appendLocked adds it to pending. Preconditions: mu held.
func (s *Sink) appendLocked(it item) {
	s.pending = append(s.pending, it)
	s.used += it.size
	// The sender waits on work only when pending was empty.
	if len(s.pending) == 1 {
		close(s.work)
		s.work = make(chan struct{})
	}
}

func (s *Sink) stamp(rec *logs.Record) {
	switch b := rec.GetBody().(type) {
	case *logs.Record_Log:
		if b.Log.GetComputationId() == "" {
			b.Log.ComputationId = s.ComputationID()
		}
		if b.Log.Timestamp == nil {
			b.Log.Timestamp = timestamppb.Now()
		}
	case *logs.Record_Event:
		if b.Event.GetComputationId() == "" {
			b.Event.ComputationId = s.ComputationID()
		}
		if b.Event.GetOriginator() == "" {
			b.Event.Originator = s.opt.Originator
		}
		if b.Event.Timestamp == nil {
			b.Event.Timestamp = timestamppb.Now()
		}
	}
}

// Flush waits until every record accepted so far has been acknowledged by
// logfwd, or ctx ends.
func (s *Sink) Flush(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.used == 0 {
			s.mu.Unlock()
			return nil
		}
		idle := s.idle
		s.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("logsink: flushing: %w", ctx.Err())
		}
	}
}

// Close flushes until ctx ends, then stops the Sink. Records still buffered
// at that point are counted as dropped and reported in the returned error.
// Close is idempotent.
func (s *Sink) Close(ctx context.Context) error {
	ferr := s.Flush(ctx)
	s.mu.Lock()
	already := s.closed
	s.closed = true
	lost := uint64(len(s.pending))
	for _, b := range s.inflight {
		lost += uint64(len(b.items))
	}
	if !already {
		s.stats.Dropped += lost
	}
	s.mu.Unlock()
	if already {
		return nil
	}
	s.cancel()
	s.wg.Wait()
	s.conn.Close()
	if ferr != nil {
		return fmt.Errorf("logsink: closing with %d records not acknowledged: %w", lost, ferr)
	}
	return nil
}

// run keeps one Push stream open and moves records from pending to logfwd.
func (s *Sink) run(ctx context.Context) {
	client := logs.NewCollectorClient(s.conn)
	backoff := 20 * time.Millisecond
	var seq uint64
	for ctx.Err() == nil {
		err := s.stream(ctx, client, &seq)
		if ctx.Err() != nil {
			return
		}
		// Everything in flight goes back to the front of pending, in order.
		s.mu.Lock()
		var back []item
		for _, b := range s.inflight {
			back = append(back, b.items...)
			s.stats.Resent += uint64(len(b.items))
		}
		s.pending = append(back, s.pending...)
		s.inflight = nil
		s.mu.Unlock()
		if err == nil {
			backoff = 20 * time.Millisecond
			continue
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

var errStreamEnded = errors.New("logsink: logfwd ended the push stream")

func (s *Sink) stream(ctx context.Context, client logs.CollectorClient, seq *uint64) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.Push(sctx)
	if err != nil {
		return fmt.Errorf("logsink: opening push stream: %w", err)
	}
	acked := make(chan struct{}, 1)
	recvErr := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		for {
			ack, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			s.ack(ack.GetSeq())
			select {
			case acked <- struct{}{}:
			default:
			}
		}
	})
	for {
		s.mu.Lock()
		var b *batch
		if len(s.pending) > 0 && len(s.inflight) < s.opt.Window {
			*seq++
			b = &batch{seq: *seq}
			n := 0
			for n < len(s.pending) && (b.bytes == 0 || b.bytes+s.pending[n].size <= s.opt.BatchBytes) {
				b.bytes += s.pending[n].size
				n++
			}
			b.items = append([]item(nil), s.pending[:n]...)
			s.pending = s.pending[n:]
			s.inflight = append(s.inflight, b)
		}
		work := s.work
		s.mu.Unlock()
		if b != nil {
			msg := &logs.Batch{Seq: b.seq, Raw: make([][]byte, len(b.items))}
			for i, it := range b.items {
				msg.Raw[i] = it.raw
			}
			if err := st.Send(msg); err != nil {
				return fmt.Errorf("logsink: sending batch %d: %w", b.seq, err)
			}
			continue
		}
		select {
		case <-work:
		case <-acked:
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errStreamEnded
			}
			return fmt.Errorf("logsink: push stream: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
}

// ack releases every in-flight batch with seq ≤ upto.
func (s *Sink) ack(upto uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for n < len(s.inflight) && s.inflight[n].seq <= upto {
		b := s.inflight[n]
		s.used -= b.bytes
		s.stats.Acked += uint64(len(b.items))
		n++
	}
	if n == 0 {
		return
	}
	s.inflight = s.inflight[n:]
	close(s.space)
	s.space = make(chan struct{})
	if s.used == 0 {
		close(s.idle)
		s.idle = make(chan struct{})
	}
}

// mustMarshalLossy encodes rec after replacing invalid UTF-8 in its strings.
func mustMarshalLossy(rec *logs.Record) []byte {
	fix := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	switch b := rec.GetBody().(type) {
	case *logs.Record_Log:
		b.Log.Message = fix(b.Log.Message)
		b.Log.ComputationId = fix(b.Log.ComputationId)
		b.Log.Level = fix(b.Log.Level)
	case *logs.Record_Event:
		b.Event.EventType = fix(b.Event.EventType)
		b.Event.Status = fix(b.Event.Status)
		b.Event.Originator = fix(b.Event.Originator)
		b.Event.ComputationId = fix(b.Event.ComputationId)
	}
	raw, _ := proto.Marshal(rec)
	return raw
}

// encodeLog encodes Record{log: l} by hand: it is the hot path of every log
// call, and reflection-based proto.Marshal costs several times more. The
// output is what proto.Marshal produces (fields in number order), with
// invalid UTF-8 replaced so that the manager can decode it.
func encodeLog(l *cvms.AgentLog) []byte {
	t := l.GetTimestamp()
	return encodeLogParts([]byte(l.GetMessage()), l.GetComputationId(), l.GetLevel(), t != nil, t.GetSeconds(), t.GetNanos())
}

// encodeLogParts encodes a log record whose message is msg (not retained),
// truncating a message over MaxText.
func encodeLogParts(msg []byte, cid, lvl string, hasTS bool, sec int64, nanos int32) []byte {
	str := func(s string) string {
		if !utf8.ValidString(s) {
			return strings.ToValidUTF8(s, "\uFFFD")
		}
		return s
	}
	if len(msg) > MaxText || !utf8.Valid(msg) {
		msg = []byte(clipText(strings.ToValidUTF8(string(msg), "\uFFFD")))
	}
	cid, lvl = str(cid), str(lvl)
	tsLen := 0
	if sec != 0 {
		tsLen += 1 + protowire.SizeVarint(uint64(sec))
	}
	if nanos != 0 {
		tsLen += 1 + protowire.SizeVarint(uint64(nanos))
	}
	n := 0
	if len(msg) > 0 {
		n += 1 + protowire.SizeBytes(len(msg))
	}
	if cid != "" {
		n += 1 + protowire.SizeBytes(len(cid))
	}
	if lvl != "" {
		n += 1 + protowire.SizeBytes(len(lvl))
	}
	if hasTS {
		n += 1 + protowire.SizeBytes(tsLen)
	}
	b := make([]byte, 0, n+1+protowire.SizeVarint(uint64(n)))
	b = protowire.AppendTag(b, 1, protowire.BytesType) // Record.log
	b = protowire.AppendVarint(b, uint64(n))
	if len(msg) > 0 {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, msg)
	}
	if cid != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, cid)
	}
	if lvl != "" {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, lvl)
	}
	if hasTS {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(tsLen))
		if sec != 0 {
			b = protowire.AppendTag(b, 1, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(sec))
		}
		if nanos != 0 {
			b = protowire.AppendTag(b, 2, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(nanos))
		}
	}
	return b
}

// MaxText bounds a log message and an event's details: logfwd refuses
// records over 8 MiB, and one huge record must not block a child's stream.
const MaxText = 256 << 10

func clipText(s string) string {
	if len(s) <= MaxText {
		return s
	}
	return strings.ToValidUTF8(s[:MaxText], "") + fmt.Sprintf(" …[logsink: truncated %d bytes]", len(s)-MaxText)
}

// clip truncates what is too long, saying so in the record.
func clip(rec *logs.Record) {
	switch b := rec.GetBody().(type) {
	case *logs.Record_Log:
		b.Log.Message = clipText(b.Log.Message)
	case *logs.Record_Event:
		if n := len(b.Event.Details); n > MaxText {
			b.Event.Details = []byte(fmt.Sprintf(`{"logsink_truncated_bytes":%d}`, n))
		}
	}
}
