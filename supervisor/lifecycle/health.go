package lifecycle

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/ipc"
)

// serveCheckTimeout bounds one check of a child's gRPC service.
const serveCheckTimeout = 2 * time.Second

// checkServing makes one gRPC call to a child the supervisor has an edge to
// (agent, logfwd) over that edge, right after the child said READY: any
// answer from a gRPC server — including Unimplemented, when the child does
// not register the health service — proves the new edge reaches a serving
// child. The result goes to the log and to children.json. Runs in its own
// goroutine; posts the result to the loop.
func (s *Supervisor) checkServing(name string, gen uint32, d *ipc.Dialer) {
	ctx, cancel := context.WithTimeout(context.Background(), serveCheckTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	cc, err := ipc.GRPCClient(d)
	if err == nil {
		_, err = grpc_health_v1.NewHealthClient(cc).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
		cc.Close()
	}
	code := status.Code(err)
	ok := err == nil || (code != codes.Unavailable && code != codes.DeadlineExceeded && code != codes.Canceled)
	s.post(evServing{name: name, gen: gen, ok: ok, code: code.String()})
}
