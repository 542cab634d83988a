package agent

import (
	"bytes"
	"context"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/ipc"
	agentpb "github.com/cvmd/cvmd/proto/agent"
)

// holdingAlgo receives one chunk, then holds the stream until it ends, as a
// long authenticated upload does.
type holdingAlgo struct {
	agentpb.UnimplementedAgentServiceServer
	got   chan struct{}
	ended chan struct{}
}

func (h *holdingAlgo) Algo(stream agentpb.AgentService_AlgoServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	h.got <- struct{}{}
	<-stream.Context().Done()
	close(h.ended)
	return stream.Context().Err()
}

// admissionServer serves health and holdingAlgo behind an admission of max
// slots and the given timeout.
func admissionServer(t *testing.T, max int64, timeout time.Duration) (*grpc.ClientConn, *holdingAlgo, *ipc.Dialer) {
	t.Helper()
	ad := &admission{max: max, timeout: timeout}
	srv := grpc.NewServer(append(ServerOptions(), ad.options()...)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	algo := &holdingAlgo{got: make(chan struct{}, 1), ended: make(chan struct{})}
	agentpb.RegisterAgentServiceServer(srv, algo)
	ad.learn(srv)
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
	return cc, algo, d
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %v", what, err, code)
	}
}

// TestAdmission: unknown methods are refused before their body; public
// calls hold a slot until they end (or the timeout ends them); an upload
// gives its slot back at its first chunk and is not cut by the timeout.
func TestAdmission(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const timeout = 300 * time.Millisecond

	t.Run("unknown method", func(t *testing.T) {
		cc, _, _ := admissionServer(t, 1, time.Minute)
		err := cc.Invoke(ctx, "/agent.AgentService/NoSuch", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
		wantCode(t, "unknown method", err, codes.Unimplemented)
		// It took no slot.
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		wantCode(t, "check", err, codes.OK)
	})

	t.Run("public calls hold their slot until they end", func(t *testing.T) {
		cc, _, _ := admissionServer(t, 1, time.Minute)
		hc := healthpb.NewHealthClient(cc)
		wctx, wcancel := context.WithCancel(ctx)
		w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatal(err)
		}
		_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
		wantCode(t, "check while the watch holds the one slot", err, codes.ResourceExhausted)
		wcancel()
		for {
			_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				break
			}
			wantCode(t, "check after the watch ended", err, codes.ResourceExhausted)
			time.Sleep(10 * time.Millisecond) // the server sees the cancel shortly
		}
	})

	t.Run("the timeout ends a public call", func(t *testing.T) {
		cc, _, _ := admissionServer(t, 1, timeout)
		w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for err == nil {
			_, err = w.Recv()
		}
		wantCode(t, "watch past the timeout", err, codes.Canceled)
		if d := time.Since(start); d < timeout {
			t.Fatalf("ended after %v, before the timeout %v", d, timeout)
		}
	})

	t.Run("a call aborted at its deadline gives its slot back", func(t *testing.T) {
		cc, _, d := admissionServer(t, 1, time.Minute)
		// grpc-timeout 1n: grpc-go aborts the stream right after the tap,
		// without a stats End.
		c, err := d.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(http2.ClientPreface))
		fr := http2.NewFramer(c, c)
		fr.WriteSettings()
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.health.v1.Health/Check"},
			{":authority", "agent"}, {"content-type", "application/grpc"}, {"te", "trailers"}, {"grpc-timeout", "1n"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if h, ok := f.(*http2.HeadersFrame); ok && h.StreamID == 1 {
				break // the abort's trailers
			}
		}
		hc := healthpb.NewHealthClient(cc)
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		for {
			_, err := hc.Check(wctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				break
			}
			if wctx.Err() != nil {
				t.Fatalf("the aborted call kept its slot: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("an upload gives its slot back at its first chunk", func(t *testing.T) {
		cc, algo, _ := admissionServer(t, 1, timeout)
		uctx, ucancel := context.WithCancel(ctx)
		defer ucancel()
		up, err := agentpb.NewAgentServiceClient(cc).Algo(uctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := up.Send(&agentpb.AlgoRequest{Algorithm: []byte("chunk")}); err != nil {
			t.Fatal(err)
		}
		<-algo.got
		if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("check while an authenticated upload runs: %v", err)
		}
		// Nothing ends it: twice the timeout passes with its handler running.
		select {
		case <-algo.ended:
			t.Fatal("the upload was cut by the timeout")
		case <-time.After(2 * timeout):
		}
	})
}
