package agenttest

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// CallBound is how long a test's unary call to the agent may take when
// the caller set no deadline of its own: far above any call's time on a
// loaded machine, so that reaching it means the agent stopped answering.
const CallBound = 2 * time.Minute

// StopBound is how long stopping the agent may take before the test fails
// with every goroutine's stack (what the agent was stuck in).
const StopBound = time.Minute

// BoundedCalls is a dial option that gives every unary call without a
// deadline one of d, and names the method when it is reached: a test
// waiting on a silent agent fails saying what it waited for instead of
// hanging until the test binary's timeout.
func BoundedCalls(d time.Duration) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); ok {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("%s: no answer within %v: %w", method, d, err)
		}
		return err
	})
}

// WithinBound runs stop and waits up to d for it; past d the test fails
// naming what was being stopped, with all goroutines' stacks, and goes on
// (stop keeps running in the background).
func WithinBound(t testing.TB, d time.Duration, what string, stop func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); stop() }()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("%s did not finish within %v; goroutines:\n%s", what, d, buf)
	}
}
