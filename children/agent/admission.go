package agent

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// MaxRecvMsgSize bounds one received message: a 1 MiB chunk (what Cocos's
// CLI and cvm send in each AlgoRequest and DataRequest) plus its framing and
// a file name. grpc-go reads a whole message before the handler runs, so
// this is also what one stream may make the agent hold before anything is
// authenticated.
const MaxRecvMsgSize = 1<<20 + 64<<10

// MaxUnauthenticatedStreams bounds, across all of the public server's
// connections, the streams whose request the agent is receiving before it
// knows who sent it. Each may hold about MaxRecvMsgSize and the stream's
// flow-control window (together ≈ 3 MiB, so ≈ 50 MiB for all), whatever
// the number of connections; past it a stream is refused with
// ResourceExhausted before any of its body is read.
const MaxUnauthenticatedStreams = 16

// UnauthenticatedCallTimeout bounds how long a stream may keep its
// unauthenticated slot: an upload until its first chunk, a public call
// (health, attestation, IMA, role challenge) until it ends. A call still
// holding its slot then is cancelled, so slow senders and readers cannot
// keep the slots. It is longer than any public call's own bound (an Azure
// token's 60 s).
const UnauthenticatedCallTimeout = 90 * time.Second

// authenticatedMethods authenticate their caller in the handler, right
// after their request (Result) or before their first chunk (Algo, Data):
// once that much is received they no longer count as unauthenticated.
// Every other method is public and counts until it ends.
var authenticatedMethods = map[string]bool{
	"/agent.AgentService/Algo":   true,
	"/agent.AgentService/Data":   true,
	"/agent.AgentService/Result": true,
}

// admission is the public server's budget of unauthenticated streams: its
// tap refuses streams of unknown methods and streams beyond the budget when
// their headers arrive (before grpc-go reads a byte of their body), and
// its stats handler and interceptor give the slots back.
type admission struct {
	max     int64
	timeout time.Duration
	inUse   atomic.Int64
	// known are the methods the server serves (set by RegisterPublic); a
	// stream for any other is refused in the tap, as grpc-go would refuse
	// it after the fact without the end of the stream being seen.
	known atomic.Pointer[map[string]bool]
}

func newAdmission() *admission {
	return &admission{max: MaxUnauthenticatedStreams, timeout: UnauthenticatedCallTimeout}
}

// learn records the methods s serves.
func (ad *admission) learn(s *grpc.Server) {
	known := map[string]bool{}
	for svc, info := range s.GetServiceInfo() {
		for _, m := range info.Methods {
			known["/"+svc+"/"+m.Name] = true
		}
	}
	ad.known.Store(&known)
}

// options are the server options that enforce the budget.
func (ad *admission) options() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InTapHandle(ad.tap),
		grpc.StatsHandler(admissionStats{}),
		grpc.ChainStreamInterceptor(ad.interceptStream),
	}
}

type slotKey struct{}

// slot is one stream's place in the budget.
type slot struct {
	ad       *admission
	released atomic.Bool
	timer    atomic.Pointer[time.Timer]
	cancel   context.CancelFunc
}

// release gives the place back, once; it reports whether this call did.
func (s *slot) release() bool {
	if !s.released.CompareAndSwap(false, true) {
		return false
	}
	s.ad.inUse.Add(-1)
	if t := s.timer.Load(); t != nil {
		t.Stop()
	}
	return true
}

// tap runs when a stream's headers arrive, under the transport's lock: it
// only counts.
func (ad *admission) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if known := ad.known.Load(); known == nil || !(*known)[info.FullMethodName] {
		return nil, status.Errorf(codes.Unimplemented, "agent: unknown method %s", info.FullMethodName)
	}
	if ad.inUse.Add(1) > ad.max {
		ad.inUse.Add(-1)
		return nil, status.Errorf(codes.ResourceExhausted,
			"agent: %d requests not yet authenticated are in progress, the most it receives at once across all connections; retry later", ad.max)
	}
	// A call whose deadline is sooner ends then anyway; grpc-go may even
	// abort it right after the tap, without the End that gives the slot
	// back, so the timer does at that deadline.
	hold := ad.timeout
	if dl, ok := ctx.Deadline(); ok {
		hold = min(hold, time.Until(dl))
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &slot{ad: ad, cancel: cancel}
	s.timer.Store(time.AfterFunc(hold, func() {
		if s.release() {
			cancel() // the call still held its slot: end it
		}
	}))
	return context.WithValue(ctx, slotKey{}, s), nil
}

func slotOf(ctx context.Context) *slot {
	s, _ := ctx.Value(slotKey{}).(*slot)
	return s
}

// interceptStream gives the slot of an authenticated method back once its
// first RecvMsg returns: by then Result's handler is about to check the
// caller, and Algo's and Data's have (they authenticate before receiving).
func (ad *admission) interceptStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s := slotOf(ss.Context()); s != nil && authenticatedMethods[info.FullMethod] {
		ss = &releasingStream{ServerStream: ss, slot: s}
	}
	return handler(srv, ss)
}

type releasingStream struct {
	grpc.ServerStream
	slot *slot
}

func (r *releasingStream) RecvMsg(m any) error {
	err := r.ServerStream.RecvMsg(m)
	r.slot.release()
	return err
}

// admissionStats gives a stream's slot back when the stream ends (every
// stream of a known method that passed the tap ends with stats.End).
type admissionStats struct{}

func (admissionStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (admissionStats) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if _, ok := st.(*stats.End); ok {
		if s := slotOf(ctx); s != nil {
			s.release()
			s.cancel()
		}
	}
}
func (admissionStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (admissionStats) HandleConn(context.Context, stats.ConnStats)                       {}
