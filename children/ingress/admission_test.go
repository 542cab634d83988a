package ingress

import (
	"bytes"
	"context"
	"crypto/sha3"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/agent"
)

// frameBytes is one HTTP/2 frame header and payload.
func frameBytes(typ, flags byte, stream uint32, payload []byte) []byte {
	b := make([]byte, frameHeaderLen, frameHeaderLen+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	binary.BigEndian.PutUint32(b[5:], stream)
	return append(b, payload...)
}

type trackedFrame struct {
	fromClient  bool
	typ, flags  byte
	stream      uint32
	payloadSize int
}

// trackerCases drive TestFrameTracker and seed FuzzFrameTracker.
var trackerCases = []struct {
	name     string
	frames   []trackedFrame
	wantOpen int
	wantEver bool
}{
	{"settings and pings are not streams", []trackedFrame{{true, 0x4, 0, 0, 6}, {false, 0x4, 0, 0, 0}, {true, 0x6, 0, 0, 8}}, 0, false},
	{"a request open", []trackedFrame{{true, frameHeaders, 0x4, 1, 40}, {true, frameData, 0, 1, 100}}, 1, true},
	{"a unary call done", []trackedFrame{{true, frameHeaders, 0x4, 1, 40}, {true, frameData, flagEndStream, 1, 5},
		{false, frameHeaders, 0x4, 1, 10}, {false, frameData, 0, 1, 7}, {false, frameHeaders, 0x5, 1, 12}}, 0, true},
	{"reset by the client", []trackedFrame{{true, frameHeaders, 0x4, 3, 40}, {true, frameRSTStream, 0, 3, 4}}, 0, true},
	{"reset by the agent", []trackedFrame{{true, frameHeaders, 0x4, 5, 40}, {false, frameRSTStream, 0, 5, 4}}, 0, true},
	{"even streams are not the client's", []trackedFrame{{true, frameHeaders, 0x4, 2, 40}}, 0, false},
	{"server headers do not open", []trackedFrame{{false, frameHeaders, 0x4, 1, 40}}, 0, false},
	{"two streams, one done", []trackedFrame{{true, frameHeaders, 0x5, 1, 40}, {true, frameHeaders, 0x4, 3, 40},
		{false, frameHeaders, 0x5, 1, 10}}, 1, true},
	{"data after close is ignored", []trackedFrame{{true, frameHeaders, 0x5, 1, 40}, {false, frameHeaders, 0x5, 1, 10},
		{true, frameData, 0, 1, 10}}, 0, true},
}

// feedInChunks sends the frames of both directions through frameReaders,
// cut into pieces of chunk bytes, and returns the tracker.
func feedInChunks(frames []trackedFrame, chunk int) *connTracker {
	t := newConnTracker(time.Now(), time.Hour, time.Hour, func(string) {})
	up, down := &frameReader{fromClient: true, t: t}, &frameReader{t: t}
	for _, f := range frames {
		b := frameBytes(f.typ, f.flags, f.stream, make([]byte, f.payloadSize))
		r := down
		if f.fromClient {
			r = up
		}
		for len(b) > 0 {
			n := min(chunk, len(b))
			r.feed(b[:n])
			b = b[n:]
		}
	}
	t.stop()
	return t
}

func TestFrameTracker(t *testing.T) {
	for _, tc := range trackerCases {
		for _, chunk := range []int{1, 3, 9, 10, 1 << 20} {
			t.Run(fmt.Sprintf("%s/chunks of %d", tc.name, chunk), func(t *testing.T) {
				tr := feedInChunks(tc.frames, chunk)
				if sn := tr.snapshot(); sn.open != tc.wantOpen || tr.opened() != tc.wantEver {
					t.Fatalf("open %d ever %v, want %d %v", sn.open, tr.opened(), tc.wantOpen, tc.wantEver)
				}
			})
		}
	}
}

// FuzzFrameTracker: whatever bytes a client or the agent sends, in whatever
// pieces, the tracker neither panics nor tracks more than its bound, and a
// stream count never goes negative.
func FuzzFrameTracker(f *testing.F) {
	for _, tc := range trackerCases {
		var up, down []byte
		for _, fr := range tc.frames {
			b := frameBytes(fr.typ, fr.flags, fr.stream, make([]byte, fr.payloadSize))
			if fr.fromClient {
				up = append(up, b...)
			} else {
				down = append(down, b...)
			}
		}
		f.Add(up, down, uint8(7))
	}
	f.Fuzz(func(t *testing.T, up, down []byte, chunk uint8) {
		tr := newConnTracker(time.Now(), time.Hour, time.Hour, func(string) {})
		defer tr.stop()
		u, d := &frameReader{fromClient: true, t: tr}, &frameReader{t: tr}
		n := int(chunk) + 1
		for len(up) > 0 || len(down) > 0 {
			a, b := min(n, len(up)), min(n, len(down))
			u.feed(up[:a])
			d.feed(down[:b])
			up, down = up[a:], down[b:]
		}
		if sn := tr.snapshot(); sn.open < 0 || sn.open > maxTrackedStreams {
			t.Fatalf("open streams %d", sn.open)
		}
	})
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t testing.TB, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// established writes the preface and an empty SETTINGS frame (as every
// HTTP/2 client must) and waits for the agent's first frame: the connection
// is then past its handshake and relayed.
func established(t testing.TB, c net.Conn) {
	t.Helper()
	if _, err := c.Write(append([]byte(h2Preface), frameBytes(0x4, 0, 0, nil)...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("no frame from the agent: %v", err)
	}
	c.SetReadDeadline(time.Time{})
}

// closedBy waits up to d for the ingress to close c (EOF or reset),
// draining what the agent sends meanwhile.
func closedBy(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// clientFrom is a plaintext gRPC client whose connections come from the
// loopback address src.
func clientFrom(t testing.TB, src, addr string) *grpc.ClientConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	cc, err := grpc.NewClient(addr, plainCreds, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", a)
	}))
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// healthFrom runs one health check on a fresh connection from src and
// returns how long it took.
func healthFrom(t testing.TB, src, addr string, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	cc := clientFrom(t, src, addr)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"}, grpc.WaitForReady(true))
	return time.Since(start), err
}

// TestHandshakeEvictionPerSource: a source at its share of connections in
// their handshake loses its own oldest for a new one; other sources keep
// theirs.
func TestHandshakeEvictionPerSource(t *testing.T) {
	testutil.CheckLeaks(t)
	addr := startIngress(t, Config{Backend: startBackend(t), MaxHandshakes: 4, MaxHandshakesPerSource: 2})
	a1 := dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.2", addr)
	b1 := dialFrom(t, "127.0.0.1", addr)
	dialFrom(t, "127.0.0.2", addr) // the source's third: a1 goes
	if !closedBy(a1, 5*time.Second) {
		t.Fatal("the source's oldest connection in its handshake was not evicted")
	}
	established(t, b1) // the other source's connection was kept

	// At the global cap the oldest of all goes.
	addr = startIngress(t, Config{Backend: startBackend(t), MaxHandshakes: 3})
	c1 := dialFrom(t, "127.0.0.3", addr)
	dialFrom(t, "127.0.0.4", addr)
	dialFrom(t, "127.0.0.5", addr)
	dialFrom(t, "127.0.0.6", addr)
	if !closedBy(c1, 5*time.Second) {
		t.Fatal("the oldest connection in its handshake was not evicted at max_handshakes")
	}
}

// openUpload is a Data upload in progress from one source: its stream is
// open (the agent answered its headers) until finish.
type openUpload struct {
	cc   *grpc.ClientConn
	st   grpc.ClientStreamingClient[agent.DataRequest, agent.DataResponse]
	sent []byte
}

// startUpload opens a Data stream from src and waits until it reached the
// agent, so the ingress has seen it open.
func startUpload(t testing.TB, src, addr string) *openUpload {
	t.Helper()
	cc := clientFrom(t, src, addr)
	t.Cleanup(func() { cc.Close() })
	st, err := agent.NewAgentServiceClient(cc).Data(context.Background(), grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Fatalf("upload from %s did not reach the agent: %v", src, err)
	}
	return &openUpload{cc: cc, st: st}
}

// send sends one 64 KiB chunk.
func (u *openUpload) send(t testing.TB) {
	t.Helper()
	chunk := bytes.Repeat([]byte{byte(len(u.sent) >> 16)}, 64<<10)
	if err := u.st.Send(&agent.DataRequest{Dataset: chunk, Filename: "d"}); err != nil {
		t.Fatalf("upload: %v", err)
	}
	u.sent = append(u.sent, chunk...)
}

// finish ends the upload and checks that every byte arrived.
func (u *openUpload) finish(t testing.TB) {
	t.Helper()
	if _, err := u.st.CloseAndRecv(); err != nil {
		t.Fatalf("upload: %v", err)
	}
	want := sha3.Sum256(u.sent)
	if got := u.st.Trailer().Get("sha3"); len(got) != 1 || got[0] != hex.EncodeToString(want[:]) {
		t.Fatalf("upload digest %v, want %x", got, want)
	}
	u.cc.Close()
}

// TestEvictionSparesWorkingConnections: at the per-source and global caps a
// new connection evicts the longest streamless connection of the fullest
// source; a connection whose stream is moving data is never evicted, and
// when every connection is busy the new one is refused instead.
func TestEvictionSparesWorkingConnections(t *testing.T) {
	testutil.CheckLeaks(t)
	addr := startIngress(t, Config{Backend: startBackend(t), MaxConns: 3, MaxConnsPerSource: 2})
	work := startUpload(t, "127.0.0.1", addr)
	work.send(t)
	i1 := dialFrom(t, "127.0.0.2", addr)
	established(t, i1)
	i2 := dialFrom(t, "127.0.0.2", addr)
	established(t, i2)
	n := dialFrom(t, "127.0.0.2", addr) // per-source cap: i1 (oldest of the source) goes
	established(t, n)
	if !closedBy(i1, 5*time.Second) {
		t.Fatal("per-source cap: the oldest streamless connection was not evicted")
	}
	work.send(t)
	m := dialFrom(t, "127.0.0.3", addr) // global cap: the fullest source's oldest streamless (i2) goes
	established(t, m)
	if !closedBy(i2, 5*time.Second) {
		t.Fatal("global cap: the oldest streamless connection of the fullest source was not evicted")
	}
	work.send(t)
	work.finish(t) // the working connection was never touched

	// Every slot busy: a new connection is refused, the uploads go on.
	addr = startIngress(t, Config{Backend: startBackend(t), MaxConns: 1})
	busy := startUpload(t, "127.0.0.1", addr)
	busy.send(t)
	late := dialFrom(t, "127.0.0.2", addr)
	io.WriteString(late, h2Preface)
	if !closedBy(late, 5*time.Second) {
		t.Fatal("a connection beyond max_connections was admitted while every slot was busy")
	}
	busy.send(t)
	busy.finish(t)
}

// TestFirstRequestDeadline: a client that completes its handshake but opens
// no stream is closed after the first-request timeout, even while it keeps
// sending (connection-level frames are bytes, not work).
func TestFirstRequestDeadline(t *testing.T) {
	testutil.CheckLeaks(t)
	const first = 300 * time.Millisecond
	addr := startIngress(t, Config{Backend: startBackend(t), FirstRequestTimeout: first})
	c := dialFrom(t, "127.0.0.1", addr)
	start := time.Now()
	established(t, c)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// WINDOW_UPDATE of 1 byte on the connection: valid, and unlike PING
		// not something gRPC's keepalive policy would end the connection for.
		ping := frameBytes(0x8, 0, 0, []byte{0, 0, 0, 1})
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write(ping); err != nil {
					return
				}
			}
		}
	})
	closed := closedBy(c, 10*time.Second)
	close(stop)
	wg.Wait()
	if !closed {
		t.Fatal("a connection without a request outlived the first-request timeout")
	}
	if d := time.Since(start); d < first {
		t.Fatalf("closed after %v, before the %v timeout", d, first)
	}
}

// TestStreamlessTimeout: after its last stream a connection is closed once
// it has had none for the streamless timeout; one with a stream open stays.
func TestStreamlessTimeout(t *testing.T) {
	testutil.CheckLeaks(t)
	addr := startIngress(t, Config{Backend: startBackend(t), StreamlessTimeout: 300 * time.Millisecond})
	up := startUpload(t, "127.0.0.1", addr) // a stream open the whole time, quiet in between
	cc := clientFrom(t, "127.0.0.1", addr)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"}); err != nil {
		t.Fatal(err)
	}
	// The idle gRPC connection is closed by the ingress: gRPC leaves READY.
	for s := cc.GetState(); s == connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatal("the streamless connection was not closed")
		}
	}
	up.send(t)
	up.finish(t) // its connection outlived the other's streamless timeout
}

// TestFloodFromOneSource holds a flood of connections from 127.0.0.2 that
// send the HTTP/2 preface and then nothing, renewing them as fast as it
// can, and checks that health checks from another source are each answered
// within floodBound.
//
// A check from the flood's own source is tried too but only logged: it
// competes with the flood for that source's 32 slots, and a new connection
// of the flood evicts the oldest of them that has no stream yet, so the
// check's connection lives only until 32 flood connections arrive after
// it (a few milliseconds here). On an idle machine its request is in by
// then; under load it may not be. Per-source fairness protects the other
// sources, not the clients sharing an attacker's address.
func TestFloodFromOneSource(t *testing.T) {
	testutil.CheckLeaks(t)
	addr := startIngress(t, Config{Backend: startBackend(t)})
	f := startFlood(t, "127.0.0.2", addr, floodSize(t))
	defer f.stop()
	var took []time.Duration
	for range 5 {
		d, err := healthFrom(t, "127.0.0.1", addr, floodBound)
		if err != nil {
			t.Fatalf("health check from 127.0.0.1 during the flood from 127.0.0.2 (%d connections opened so far): %v after %v", f.opened(), err, d)
		}
		took = append(took, d)
	}
	slices.Sort(took)
	t.Logf("%d flood connections opened; 5 health checks from another source answered in %v..%v (bound %v)", f.opened(), took[0], took[len(took)-1], floodBound)
	answered := 0
	for range 5 {
		if _, err := healthFrom(t, "127.0.0.2", addr, floodBound); err == nil {
			answered++
		}
	}
	t.Logf("health checks from the flood's own source: %d of 5 answered within %v", answered, floodBound)
}

// floodBound is how long a legitimate health check may take during a flood
// (measured 1–40 ms here; before admission control it never succeeded).
const floodBound = 3 * time.Second

// floodSize is how many connections the flood holds at once: 2000, fewer if
// this process may not open that many fds (each connection costs two here:
// the flood's end and the ingress's).
func floodSize(t testing.TB) int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	n := min(2000, (int(rl.Cur)-256)/2)
	if n < 300 {
		t.Skipf("RLIMIT_NOFILE %d is too low for a flood", rl.Cur)
	}
	return n
}

// flood keeps size connections from src open, each having sent only the
// preface, replacing its oldest with a new one in a loop until stop.
type flood struct {
	done chan struct{}
	full chan struct{} // closed once size connections were opened
	wg   sync.WaitGroup
	n    atomic.Int64
}

func startFlood(t testing.TB, src, addr string, size int) *flood {
	f := &flood{done: make(chan struct{}), full: make(chan struct{})}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	f.wg.Go(func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			select {
			case <-f.done:
				return
			default:
			}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				continue
			}
			c.Write([]byte(h2Preface))
			held = append(held, c)
			if len(held) > size {
				held[0].Close()
				held = held[1:]
			}
			if f.n.Add(1) == int64(size) {
				close(f.full)
			}
		}
	})
	<-f.full // at full strength before the checks start
	return f
}

func (f *flood) opened() int64 { return f.n.Load() }

func (f *flood) stop() {
	close(f.done)
	f.wg.Wait()
}
