package agent

import (
	"bytes"
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cvmd/cvmd/ipc"
)

// TestStreamFloodBeforeAuthentication: one connection opening thousands of
// streams that never send their request (a few bytes of HEADERS each,
// before any authentication: the ingress forwards frames as they are) gets
// at most MaxConcurrentStreams of them; the rest are refused at once.
// Before the cap each one held a handler goroutine until the connection
// closed: 20000 such streams, about 400 KB sent, cost the agent 220 MiB of
// its 256 MiB.
func TestStreamFloodBeforeAuthentication(t *testing.T) {
	srv := grpc.NewServer(ServerOptions()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l := ipc.NewListener("agent")
	go srv.Serve(l)
	defer srv.Stop()
	cli, sv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "agent")
	if err != nil {
		t.Fatal(err)
	}
	l.Add(sv)
	d := ipc.NewDialer("agent", cli)
	defer d.Close()
	c, err := d.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := runtime.NumGoroutine()
	c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	var refused atomic.Int64
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.ErrCode == http2.ErrCodeRefusedStream {
				refused.Add(1)
			}
		}
	}()
	const streams = 2000
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := range streams {
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.health.v1.Health/Check"},
			{":authority", "agent"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	want := int64(streams - MaxConcurrentStreams)
	for deadline := time.Now().Add(30 * time.Second); refused.Load() < want; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d streams refused, want %d (goroutines: %d more than before)", refused.Load(), streams, want, runtime.NumGoroutine()-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine() - before; n > 4*MaxConcurrentStreams {
		t.Fatalf("%d more goroutines for %d open streams", n, MaxConcurrentStreams)
	}
}
