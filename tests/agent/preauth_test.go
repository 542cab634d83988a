package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	agentchild "github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/internal/testutil"
)

// h2Client is an HTTP/2 client that writes gRPC frames as an attacker
// would (requests it never finishes), obeying flow control and recording
// how the server answered each stream.
type h2Client struct {
	c   net.Conn
	fr  *http2.Framer
	wmu sync.Mutex // serializes frame writes

	mu         sync.Mutex
	cond       *sync.Cond
	connWindow int64            // guarded by mu
	initWindow int64            // guarded by mu
	windows    map[uint32]int64 // guarded by mu
	answers    map[uint32]string
	pings      int
	err        error
}

func newH2Client(t *testing.T, dial func(context.Context) (net.Conn, error)) *h2Client {
	t.Helper()
	c, err := dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &h2Client{c: c, fr: http2.NewFramer(c, c), connWindow: 65535, initWindow: 65535, windows: map[uint32]int64{}, answers: map[uint32]string{}}
	h.cond = sync.NewCond(&h.mu)
	c.Write([]byte(http2.ClientPreface))
	h.fr.WriteSettings()
	go h.read()
	return h
}

func (h *h2Client) read() {
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := h.fr.ReadFrame()
		h.mu.Lock()
		if err != nil {
			h.err = err
			h.cond.Broadcast()
			h.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for id := range h.windows {
						h.windows[id] += int64(v) - h.initWindow
					}
					h.initWindow = int64(v)
				}
				h.wmu.Lock()
				h.fr.WriteSettingsAck()
				h.wmu.Unlock()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				h.connWindow += int64(f.Increment)
			} else {
				h.windows[f.StreamID] += int64(f.Increment)
			}
		case *http2.HeadersFrame:
			fields, _ := dec.DecodeFull(f.HeaderBlockFragment())
			var code, msg string
			for _, hf := range fields {
				switch hf.Name {
				case "grpc-status":
					code = hf.Value
				case "grpc-message":
					msg = hf.Value
				}
			}
			if code != "" {
				h.answers[f.StreamID] = "grpc-status " + code + ": " + msg
			}
		case *http2.RSTStreamFrame:
			if _, ok := h.answers[f.StreamID]; !ok {
				h.answers[f.StreamID] = "reset " + f.ErrCode.String()
			}
		case *http2.PingFrame:
			if f.IsAck() {
				h.pings++
			}
		case *http2.GoAwayFrame:
			h.err = fmt.Errorf("goaway %v", f.ErrCode)
		}
		h.cond.Broadcast()
		h.mu.Unlock()
	}
}

// open starts a gRPC request for method on stream id.
func (h *h2Client) open(id uint32, method string) error {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
		{":authority", "agent"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	h.mu.Lock()
	h.windows[id] = h.initWindow
	h.mu.Unlock()
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
}

// send writes data on stream id as the windows allow; it stops early when
// the server has answered the stream.
func (h *h2Client) send(id uint32, data []byte) error {
	for len(data) > 0 {
		h.mu.Lock()
		for h.err == nil && h.answers[id] == "" && (h.connWindow <= 0 || h.windows[id] <= 0) {
			h.cond.Wait()
		}
		if h.err != nil || h.answers[id] != "" {
			err := h.err
			h.mu.Unlock()
			return err
		}
		n := int(min(int64(len(data)), h.connWindow, h.windows[id], 16384))
		h.connWindow -= int64(n)
		h.windows[id] -= int64(n)
		h.mu.Unlock()
		h.wmu.Lock()
		err := h.fr.WriteData(id, false, data[:n])
		h.wmu.Unlock()
		if err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// sync returns once the server has read every frame written before it.
func (h *h2Client) sync(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	want := h.pings + 1
	h.mu.Unlock()
	h.wmu.Lock()
	h.fr.WritePing(false, [8]byte{1})
	h.wmu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.pings < want && h.err == nil {
		h.cond.Wait()
	}
	if h.err != nil {
		t.Fatalf("connection: %v", h.err)
	}
}

func (h *h2Client) answered() map[uint32]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[uint32]string{}
	for k, v := range h.answers {
		out[k] = v
	}
	return out
}

// TestUnauthenticatedRequestsHoldBoundedMemory: grpc-go reads a whole
// request message before any handler (and so any authentication) runs.
// With messages of up to 8 MiB, 16 streams per connection and the
// ingress's 256 connections, anyone could make the agent (memory limit
// 256 MiB) hold far more than it has and be OOM-killed, ending the
// computation. Here, without a credential: 16 streams claiming 8 MiB
// messages on one connection, then 128 streams of 1 MiB requests over 8
// connections, all left unfinished — 256 MiB the agent held before. Now
// messages above MaxRecvMsgSize are refused, and only
// MaxUnauthenticatedStreams requests are received at once across all
// connections (the rest refused with ResourceExhausted naming the bound,
// before their body is read), so the agent's peak RSS grows by far less;
// once the attackers leave, the slots are back.
func TestUnauthenticatedRequestsHoldBoundedMemory(t *testing.T) {
	p := startProc(t, t.TempDir())
	// The agent's baseline: a finished health check.
	cc := rawClient(t, p.Dial)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	before := p.peakRSSMiB(t)

	const method = "/grpc.health.v1.Health/Check"
	attack := func(conns, streams, msgLen int) []*h2Client {
		// A gRPC message header claiming msgLen bytes, then all of them but one.
		body := make([]byte, 5+msgLen-1)
		binary.BigEndian.PutUint32(body[1:5], uint32(msgLen))
		body[5] = 0x0a // field 1 (service), a string of the rest
		hs := make([]*h2Client, conns)
		var wg sync.WaitGroup
		for i := range hs {
			hs[i] = newH2Client(t, p.Dial)
			wg.Go(func() {
				for s := range streams {
					id := uint32(2*s + 1)
					if err := hs[i].open(id, method); err != nil {
						t.Errorf("open: %v", err)
						return
					}
					if err := hs[i].send(id, body); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		for _, h := range hs {
			h.sync(t)
		}
		return hs
	}
	large := attack(1, 16, 8<<20-64)
	many := attack(8, 16, 1<<20)
	peak := p.peakRSSMiB(t)
	grew := peak - before
	t.Logf("agent peak RSS %.1f MiB before, %.1f MiB under attack (+%.1f MiB; the attackers sent %d MiB)", before, peak, grew, 16*8+128)

	held, refused := 0, map[string]int{}
	for _, h := range append(large, many...) {
		ans := h.answered()
		for s := range 16 {
			if a, ok := ans[uint32(2*s+1)]; ok {
				refused[a]++
			} else {
				held++
			}
		}
	}
	t.Logf("held %d, refused %v", held, refused)
	if held > agentchild.MaxUnauthenticatedStreams {
		t.Errorf("%d unauthenticated requests held at once, want at most %d", held, agentchild.MaxUnauthenticatedStreams)
	}
	for a := range refused {
		if !strings.HasPrefix(a, "grpc-status 8:") || !strings.Contains(a, "larger than max") && !strings.Contains(a, fmt.Sprintf("%d requests not yet authenticated", agentchild.MaxUnauthenticatedStreams)) {
			t.Errorf("refusal %q: want ResourceExhausted naming the bound", a)
		}
	}
	// 16 requests of about 1 MiB, and their buffers. Under -race the agent
	// (this test binary) carries the detector's shadow memory: make test
	// checks the bound, make race the refusals.
	if grew > 64 && !testutil.Race {
		t.Errorf("the agent's RSS grew by %.1f MiB under an unauthenticated attack, want at most 64", grew)
	}

	for _, h := range append(large, many...) {
		h.c.Close()
	}
	// The slots come back as the streams end: a new client is served.
	cc2 := rawClient(t, p.Dial)
	for {
		_, err := healthpb.NewHealthClient(cc2).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("health check after the attack: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
