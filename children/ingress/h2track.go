package ingress

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// HTTP/2 frame types and flags the tracker looks at (RFC 9113 §6).
const (
	frameData      = 0x0
	frameHeaders   = 0x1
	frameRSTStream = 0x3
	flagEndStream  = 0x1
	frameHeaderLen = 9
)

// maxTrackedStreams bounds the streams a connection's tracker remembers. A
// client opening more at once is still "working" (its count stays above
// zero); the agent's gRPC server enforces its own stream limits.
const maxTrackedStreams = 1024

// streamState is what the ingress knows of one HTTP/2 stream.
type streamState uint8

const (
	clientDone streamState = 1 << iota // the client sent END_STREAM
	serverDone                         // the agent sent END_STREAM
)

// connTracker follows the HTTP/2 frames of one relayed connection by their
// 9-byte headers only (payloads are skipped, never parsed): which client
// streams are open and when a stream last carried HEADERS or DATA. It never
// refuses or changes a byte: protocol errors are the agent's to find. The
// ingress uses what it learns to tell a connection doing work from one that
// only holds a slot (admission, eviction, the streamless idle timeout).
type connTracker struct {
	// onIdle is called (under no lock) when the connection has had no open
	// stream for the current deadline: the first request's after the
	// preface, then the streamless idle timeout after each last stream.
	onIdle func(reason string)

	firstRequest, streamless time.Duration

	mu       sync.Mutex
	streams  map[uint32]streamState // guarded by mu; open client streams
	ever     bool                   // guarded by mu; a stream was opened once
	since    time.Time              // guarded by mu; no open stream since (zero while one is open)
	lastWork time.Time              // guarded by mu; latest HEADERS or DATA on an open stream
	timer    *time.Timer            // guarded by mu
	closed   bool                   // guarded by mu
}

func newConnTracker(now time.Time, firstRequest, streamless time.Duration, onIdle func(string)) *connTracker {
	t := &connTracker{onIdle: onIdle, firstRequest: firstRequest, streamless: streamless,
		streams: map[uint32]streamState{}, since: now, lastWork: now}
	t.timer = time.AfterFunc(firstRequest, t.expire)
	return t
}

// expire runs when the armed deadline passes; a stream opened meanwhile
// wins (the timer cannot always be stopped in time).
func (t *connTracker) expire() {
	t.mu.Lock()
	if t.closed || len(t.streams) > 0 {
		t.mu.Unlock()
		return
	}
	reason := "no request within the first-request timeout"
	if t.ever {
		reason = "no stream within the streamless idle timeout"
	}
	t.closed = true
	t.mu.Unlock()
	t.onIdle(reason)
}

// stop disarms the tracker; the connection is ending.
func (t *connTracker) stop() {
	t.mu.Lock()
	t.closed = true
	t.timer.Stop()
	t.mu.Unlock()
}

// snapshot is a tracker's state at one moment, for admission decisions.
type snapshot struct {
	open     int
	since    time.Time // zero while a stream is open
	lastWork time.Time
}

// opened reports whether the connection ever opened a stream.
func (t *connTracker) opened() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ever
}

func (t *connTracker) snapshot() snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	return snapshot{open: len(t.streams), since: t.since, lastWork: t.lastWork}
}

// frame applies one frame header seen in one direction. Preconditions:
// none (takes t.mu).
func (t *connTracker) frame(fromClient bool, typ, flags byte, stream uint32) {
	if stream == 0 || (typ != frameHeaders && typ != frameData && typ != frameRSTStream) {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, open := t.streams[stream]
	switch {
	case typ == frameRSTStream:
		if open {
			t.closeStreamLocked(stream, now)
		}
		return
	case !open && typ == frameHeaders && fromClient && stream%2 == 1:
		if len(t.streams) >= maxTrackedStreams {
			return
		}
		if len(t.streams) == 0 {
			t.timer.Stop()
			t.since = time.Time{}
		}
		t.streams[stream] = 0
		t.ever = true
	case !open:
		return // a frame of a stream already closed (or never opened)
	}
	t.lastWork = now
	if flags&flagEndStream != 0 {
		if fromClient {
			st |= clientDone
		} else {
			st |= serverDone
		}
		if st == clientDone|serverDone {
			t.closeStreamLocked(stream, now)
			return
		}
		t.streams[stream] = st
	}
}

// closeStreamLocked forgets stream and arms the streamless deadline when it
// was the last. Preconditions: t.mu held.
func (t *connTracker) closeStreamLocked(stream uint32, now time.Time) {
	delete(t.streams, stream)
	if len(t.streams) == 0 && !t.closed {
		t.since = now
		t.timer.Reset(t.streamless)
	}
}

// frameReader follows frame boundaries in one direction of a byte stream
// that starts at a frame header.
type frameReader struct {
	fromClient bool
	t          *connTracker
	hdr        [frameHeaderLen]byte
	have       int    // bytes of hdr filled
	skip       uint32 // payload bytes left of the current frame
}

// feed consumes b, reporting each complete frame header to the tracker.
func (r *frameReader) feed(b []byte) {
	for len(b) > 0 {
		if r.skip > 0 {
			n := min(uint32(len(b)), r.skip)
			r.skip -= n
			b = b[n:]
			continue
		}
		n := copy(r.hdr[r.have:], b)
		r.have += n
		b = b[n:]
		if r.have < frameHeaderLen {
			return
		}
		r.have = 0
		length := uint32(r.hdr[0])<<16 | uint32(r.hdr[1])<<8 | uint32(r.hdr[2])
		stream := binary.BigEndian.Uint32(r.hdr[5:9]) & 0x7fffffff
		r.t.frame(r.fromClient, r.hdr[3], r.hdr[4], stream)
		r.skip = length
	}
}

// trackedConn is the client side of a relay, seen through the tracker:
// what is read from it goes to the agent (client frames), what is written
// to it comes from the agent (agent frames).
type trackedConn struct {
	net.Conn
	up, down frameReader
}

func newTrackedConn(c net.Conn, t *connTracker) *trackedConn {
	return &trackedConn{Conn: c, up: frameReader{fromClient: true, t: t}, down: frameReader{t: t}}
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.up.feed(b[:n])
	return n, err
}

func (c *trackedConn) Write(b []byte) (int, error) {
	c.down.feed(b)
	return c.Conn.Write(b)
}

// CloseWrite half-closes the underlying connection when it can (the relay
// half-closes each side as its direction ends).
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
