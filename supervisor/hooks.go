package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/proto/cvms"
)

// Hooks connect the supervisor core to the parts written elsewhere (see
// doc.go). Every field may be nil.
type Hooks struct {
	// Sandbox serves the runner's SandboxRequest / SandboxKill messages.
	Sandbox SandboxHandler
	// Measure is called with MeasureTable and the table's canonical
	// encoding before any child starts, and with MeasureRestart and a JSON
	// description ({"child","generation","computation_id"}) on every restart.
	// It must not block for long: it runs on the supervisor's loop.
	Measure func(ctx context.Context, kind string, data []byte)
	// ManagerLink runs for the supervisor's whole life (the CVMS stream); it
	// drives computations through the Supervisor's methods
	// (StartComputation, StopComputation, AgentState, Events).
	ManagerLink func(ctx context.Context, s *Supervisor) error
}

// Kinds of measurement passed to Hooks.Measure.
const (
	MeasureTable   = "table"
	MeasureRestart = "restart"
)

// SandboxHandler makes algorithm sandboxes for the runner. Request returns
// the fds to attach to the SandboxReply (named as control.SandboxReply
// documents); the supervisor closes its copies after sending. Kill and
// KillAll end sandboxes at once; KillAll is called when the runner exits.
// Methods are called from several goroutines.
type SandboxHandler interface {
	Request(ctx context.Context, req *control.SandboxRequest) (files map[string]*os.File, err error)
	Kill(id uint64)
	KillAll()
}

// SandboxNamer is implemented by a SandboxHandler that names its sandboxes:
// RequestNamed is Request that also returns the sandbox's name, which the
// supervisor sends as SandboxReply.sandbox_id (the runner logs it; the
// egress proxy edge is "proxy:<sandbox_id>").
type SandboxNamer interface {
	RequestNamed(ctx context.Context, req *control.SandboxRequest) (files map[string]*os.File, sandboxID string, err error)
}

// Extension points: other files of this package (algosandbox.go,
// measure.go, a manager link file) install their constructors from their
// init functions with these, once each. Main uses them to fill Hooks.
var extensions struct {
	mu          sync.Mutex
	sandbox     func(s *Supervisor) SandboxHandler
	measure     func(s *Supervisor) func(ctx context.Context, kind string, data []byte)
	managerLink func(ctx context.Context, s *Supervisor) error
}

// RegisterSandboxHandler installs the constructor of the algorithm sandbox handler.
func RegisterSandboxHandler(f func(s *Supervisor) SandboxHandler) {
	extensions.mu.Lock()
	defer extensions.mu.Unlock()
	if extensions.sandbox != nil {
		panic("supervisor: sandbox handler registered twice")
	}
	extensions.sandbox = f
}

// RegisterMeasurer installs the constructor of the measurement hook.
func RegisterMeasurer(f func(s *Supervisor) func(ctx context.Context, kind string, data []byte)) {
	extensions.mu.Lock()
	defer extensions.mu.Unlock()
	if extensions.measure != nil {
		panic("supervisor: measurer registered twice")
	}
	extensions.measure = f
}

// RegisterManagerLink installs the manager link (the CVMS stream).
func RegisterManagerLink(f func(ctx context.Context, s *Supervisor) error) {
	extensions.mu.Lock()
	defer extensions.mu.Unlock()
	if extensions.managerLink != nil {
		panic("supervisor: manager link registered twice")
	}
	extensions.managerLink = f
}

// installExtensions fills the nil hooks from the registered extensions.
func (s *Supervisor) installExtensions() {
	extensions.mu.Lock()
	defer extensions.mu.Unlock()
	if s.cfg.Hooks.Sandbox == nil && extensions.sandbox != nil {
		s.cfg.Hooks.Sandbox = extensions.sandbox(s)
	}
	if s.cfg.Hooks.Measure == nil && extensions.measure != nil {
		s.cfg.Hooks.Measure = extensions.measure(s)
	}
	if s.cfg.Hooks.ManagerLink == nil && extensions.managerLink != nil {
		s.cfg.Hooks.ManagerLink = extensions.managerLink
	}
}

// Config returns the supervisor's configuration (read-only by convention).
func (s *Supervisor) Config() Config { return s.cfg }

// Log returns the supervisor's logger.
func (s *Supervisor) Log() *slog.Logger { return s.log }

// agentClient returns the agentctl client over the supervisor's "to:agent" edge.
func (s *Supervisor) agentClient() (agentctl.ControlClient, error) {
	s.dialMu.Lock()
	defer s.dialMu.Unlock()
	if s.agentConn == nil {
		d := s.dialers["agent"]
		if d == nil {
			return nil, fmt.Errorf("supervisor: no edge to the agent")
		}
		cc, err := ipc.GRPCClient(d)
		if err != nil {
			return nil, fmt.Errorf("supervisor: agent client: %w", err)
		}
		s.agentConn = cc
	}
	return agentctl.NewControlClient(s.agentConn), nil
}

// StartComputation begins a computation: restart counters start afresh
// (failed children get another chance), per-computation children are
// restarted with the computation id, and the manifest goes to the agent.
func (s *Supervisor) StartComputation(ctx context.Context, req *cvms.ComputationRunReq) error {
	if req.GetId() == "" {
		return fmt.Errorf("supervisor: computation without id")
	}
	ing, err := ingressSettings(req.GetAgentConfig(), s.atlsPlatform())
	if err != nil {
		return fmt.Errorf("supervisor: computation %s: %w", req.GetId(), err)
	}
	if err := s.do(ctx, func() { s.ingress = ing; s.newComputation(req.GetId()) }); err != nil {
		return err
	}
	cl, err := s.agentClient()
	if err != nil {
		return err
	}
	resp, err := cl.Start(ctx, req, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("supervisor: starting computation %s on the agent: %w", req.GetId(), err)
	}
	if resp.GetError() != "" {
		return fmt.Errorf("supervisor: agent refused computation %s: %s", req.GetId(), resp.GetError())
	}
	// PCR 16, as Cocos, before the manager hears that the computation runs.
	// Without it evidence does not name the manifest (a verifier pinning it
	// refuses), but the computation itself can go on.
	if err := s.measureManifest(ctx, req); err != nil {
		s.log.Error("manifest not measured into PCR 16", "computation_id", req.GetId(), "err", err)
		s.Events().Event("computation.manifest_measured", "error", "computation_id", req.GetId(), "error", err.Error())
	} else {
		s.Events().Event("computation.manifest_measured", "ok", "computation_id", req.GetId())
	}
	s.Events().Event("computation.started", "ok", "computation_id", req.GetId())
	return nil
}

// newComputation runs on the loop.
func (s *Supervisor) newComputation(id string) {
	s.compID = id
	if s.sink != nil {
		s.sink.SetComputationID(id)
	}
	for i := range s.table.Children {
		c := s.children[s.table.Children[i].Name]
		c.restarts.Reset()
		switch {
		case c.status == StatusFailed:
			c.status = StatusPending
		case c.spec.Scope == PerComputation && c.inc != nil:
			s.stopChild(c, "new computation")
			c.status = StatusPending
		}
	}
	s.kick()
}

// StopComputation asks the agent to stop the computation.
func (s *Supervisor) StopComputation(ctx context.Context, id string) error {
	cl, err := s.agentClient()
	if err != nil {
		return err
	}
	resp, err := cl.Stop(ctx, &agentctl.StopRequest{ComputationId: id}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("supervisor: stopping computation %s: %w", id, err)
	}
	if resp.GetError() != "" {
		return fmt.Errorf("supervisor: agent refused to stop %s: %s", id, resp.GetError())
	}
	s.Events().Event("computation.stopped", "ok", "computation_id", id)
	return nil
}

// AgentState asks the agent for its state.
func (s *Supervisor) AgentState(ctx context.Context) (*agentctl.StateResponse, error) {
	cl, err := s.agentClient()
	if err != nil {
		return nil, err
	}
	return cl.State(ctx, &agentctl.StateRequest{}, grpc.WaitForReady(true))
}
