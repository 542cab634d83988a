package agent

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/ipc"
)

// healthServer serves grpc.health.v1 with ServerOptions over an edge and
// returns a client of it.
func healthServer(t *testing.T) (*ipc.Dialer, healthpb.HealthClient) {
	t.Helper()
	srv := grpc.NewServer(ServerOptions()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l := ipc.NewListener("agent")
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	cli, sv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "agent")
	if err != nil {
		t.Fatal(err)
	}
	l.Add(sv)
	d := ipc.NewDialer("agent", cli)
	t.Cleanup(func() { d.Close() })
	cc, err := ipc.GRPCClient(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return d, healthpb.NewHealthClient(cc)
}

// TestHeaderListBound: request headers (metadata: role signatures and
// nonces are a few hundred bytes) are bounded to MaxHeaderListSize, not
// grpc-go's 16 MiB that every connection may hold while its header block
// is in progress.
func TestHeaderListBound(t *testing.T) {
	_, hc := healthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := hc.Check(metadata.AppendToOutgoingContext(ctx, "x-small", strings.Repeat("s", 4<<10)), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("4 KiB of metadata: %v", err)
	}
	if _, err := hc.Check(metadata.AppendToOutgoingContext(ctx, "x-big", strings.Repeat("b", 2*MaxHeaderListSize)), &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatalf("%d bytes of metadata accepted", 2*MaxHeaderListSize)
	}
}

// TestStreamFloodBeforeAuthentication: one connection opening thousands of
// streams that never send their request (a few bytes of HEADERS each,
// before any authentication: the ingress forwards frames as they are) gets
// at most MaxConcurrentStreams of them; the rest are refused at once.
// Before the cap each one held a handler goroutine until the connection
// closed: 20000 such streams, about 400 KB sent, cost the agent 220 MiB of
// its 256 MiB.
func TestStreamFloodBeforeAuthentication(t *testing.T) {
	d, _ := healthServer(t)
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
