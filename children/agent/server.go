package agent

import (
	"context"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/cocos/chunks"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/cvms"
	rcpb "github.com/cvmd/cvmd/proto/rolechallenge"
)

// MaxConcurrentStreams bounds the streams one connection may have open.
// Every stream holds a handler goroutine (and its stack) until its request
// arrives, and a stream is opened with a few bytes before anything is
// authenticated: without the bound one connection's thousands of empty
// streams exhaust the agent's memory. The CLIs use a few streams at a time
// (and gRPC clients queue beyond the bound rather than fail). With the
// ingress's 256 connections, at most 4096 such streams, about 45 MiB.
const MaxConcurrentStreams = 16

// MaxHeaderListSize bounds a request's headers (gRPC metadata: role
// signatures and challenge nonces are a few hundred bytes). grpc-go's
// default, 16 MiB, is what every connection may make the agent hold while
// its header block is in progress.
const MaxHeaderListSize = 64 << 10

// ServerOptions are the gRPC server settings the agent wants: messages up to
// MaxRecvMsgSize (Cocos sends 1 MiB chunks plus framing), MaxConcurrentStreams
// streams per connection, headers up to MaxHeaderListSize, and flow-control windows
// and buffers large enough that one upload is not paced by round trips over
// a local edge, yet small enough to bound the agent's memory.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		grpc.InitialWindowSize(2 << 20),
		grpc.InitialConnWindowSize(4 << 20),
		grpc.ReadBufferSize(1 << 20),
		grpc.WriteBufferSize(1 << 20),
	}
}

// RegisterPublic registers agent.AgentService, cvmd.rolechallenge.v1 and
// grpc.health.v1 (service "agent" SERVING, which Cocos's CLI checks, and
// "attestation", see attestationHealth) on s,
// which must have been made with PublicServerOptions (role challenges are
// bound to connections through its stats handler).
// It returns the health server, which Run turns NOT_SERVING when stopping.
func (a *Agent) RegisterPublic(s *grpc.Server) *health.Server {
	agentpb.RegisterAgentServiceServer(s, &publicService{a: a})
	rcpb.RegisterRoleChallengeServer(s, &challengeService{a: a})
	h := health.NewServer()
	h.SetServingStatus("agent", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	a.admit.learn(s)
	return h
}

// PublicServerOptions are ServerOptions plus the stats handler that tells
// the public server's connections apart (role challenges), the budget of
// unauthenticated streams across all of them (admission.go), and the codec
// that receives and sends upload and download chunks without copying them
// (cocos/chunks: the same bytes on the wire as the proto codec).
func (a *Agent) PublicServerOptions() []grpc.ServerOption {
	opts := append(ServerOptions(), a.admit.options()...)
	return append(opts, grpc.StatsHandler(&connTagger{ch: a.challenges}), grpc.ForceServerCodecV2(chunks.Codec{}))
}

// RegisterControl registers agentctl.Control on s. Only the supervisor may
// reach this server: never register it where the ingress's connections
// arrive.
func (a *Agent) RegisterControl(s *grpc.Server) {
	agentctl.RegisterControlServer(s, &controlService{a: a})
}

// Run serves the public API on public and the control API on control (nil
// for none) until ctx ends; then it stops the servers (gracefully, for at
// most 2 s) and returns nil.
func (a *Agent) Run(ctx context.Context, public, control net.Listener) error {
	pub := grpc.NewServer(a.PublicServerOptions()...)
	h := a.RegisterPublic(pub)
	servers := []*grpc.Server{pub}
	lns := []net.Listener{public}
	if control != nil {
		ctl := grpc.NewServer()
		a.RegisterControl(ctl)
		servers = append(servers, ctl)
		lns = append(lns, control)
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	hctx, hcancel := context.WithCancel(ctx)
	wg.Go(func() { a.attestationHealth(hctx, h) })
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- s.Serve(lns[i])
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// New CLI connections see the agent going away while running uploads finish.
	hcancel()
	h.Shutdown()
	for _, s := range servers {
		child.StopServer(s, 2*time.Second)
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

type publicService struct {
	agentpb.UnimplementedAgentServiceServer
	a *Agent
}

func (s *publicService) Algo(stream agentpb.AgentService_AlgoServer) error {
	return toStatus(s.a.log, "Algo", s.a.algo(stream))
}

func (s *publicService) Data(stream agentpb.AgentService_DataServer) error {
	return toStatus(s.a.log, "Data", s.a.data(stream))
}

func (s *publicService) Result(_ *agentpb.ResultRequest, stream agentpb.AgentService_ResultServer) error {
	return toStatus(s.a.log, "Result", s.a.result(stream))
}

func (s *publicService) Attestation(req *agentpb.AttestationRequest, stream agentpb.AgentService_AttestationServer) error {
	return toStatus(s.a.log, "Attestation", s.a.attestation(req, stream))
}

func (s *publicService) IMAMeasurements(_ *agentpb.IMAMeasurementsRequest, stream agentpb.AgentService_IMAMeasurementsServer) error {
	return toStatus(s.a.log, "IMAMeasurements", s.a.imaMeasurements(stream))
}

// AzureAttestationToken is unauthenticated, as in Cocos.
func (s *publicService) AzureAttestationToken(ctx context.Context, req *agentpb.AttestationTokenRequest) (*agentpb.AttestationTokenResponse, error) {
	tok, err := s.a.azureToken(ctx, req)
	if err != nil {
		return nil, toStatus(s.a.log, "AzureAttestationToken", err)
	}
	return &agentpb.AttestationTokenResponse{File: tok}, nil
}

type controlService struct {
	agentctl.UnimplementedControlServer
	a *Agent
}

func (s *controlService) Start(_ context.Context, req *cvms.ComputationRunReq) (*agentctl.StartResponse, error) {
	if err := s.a.Start(req); err != nil {
		return &agentctl.StartResponse{Error: err.Error()}, nil
	}
	return &agentctl.StartResponse{}, nil
}

func (s *controlService) State(context.Context, *agentctl.StateRequest) (*agentctl.StateResponse, error) {
	st, id := s.a.State()
	return &agentctl.StateResponse{State: string(st), ComputationId: id}, nil
}

func (s *controlService) Stop(ctx context.Context, req *agentctl.StopRequest) (*agentctl.StopResponse, error) {
	if err := s.a.Stop(ctx, req.GetComputationId()); err != nil {
		return &agentctl.StopResponse{Error: err.Error()}, nil
	}
	return &agentctl.StopResponse{}, nil
}
