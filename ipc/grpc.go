package ipc

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// GRPCClient returns a gRPC client connection whose transports are made by d.
// Security comes from the channel itself: only the supervisor hands out edges.
// Extra options are appended (interceptors, message sizes, ...).
func GRPCClient(d *Dialer, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return d.Dial(ctx) }),
		// The authority is cosmetic over an fd; passthrough keeps grpc from resolving it.
	}
	return grpc.NewClient("passthrough:///"+d.name, append(base, opts...)...)
}
