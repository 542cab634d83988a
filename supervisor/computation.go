package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/supervisor/lifecycle"
	"github.com/cvmd/cvmd/supervisor/measure"
	"github.com/cvmd/cvmd/supervisor/table"
)

// computations is how the manager link drives computations
// (manager.Supervisor): the children are prepared by the lifecycle loop,
// the computation itself is the agent's (agentctl over the supervisor's
// edge to the child with table.RoleComputations), and its manifest is
// measured into PCR 16.
type computations struct {
	sup      *lifecycle.Supervisor
	measurer *measure.Measurer
	log      *slog.Logger

	mu   sync.Mutex
	conn *grpc.ClientConn // guarded by mu; over the edge to the agent
}

// agent returns the agentctl client over the supervisor's edge to the agent.
func (c *computations) agent() (agentctl.ControlClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		d := c.sup.Dialer(c.sup.Table().WithRole(table.RoleComputations))
		if d == nil {
			return nil, fmt.Errorf("supervisor: no edge to the agent")
		}
		cc, err := ipc.GRPCClient(d)
		if err != nil {
			return nil, fmt.Errorf("supervisor: agent client: %w", err)
		}
		c.conn = cc
	}
	return agentctl.NewControlClient(c.conn), nil
}

func (c *computations) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
	}
}

// Start begins a computation: the children are prepared for it
// (lifecycle.Supervisor.NewComputation), the manifest goes to the agent,
// and once the agent accepted it the manifest is measured.
func (c *computations) Start(ctx context.Context, req *cvms.ComputationRunReq) error {
	if err := c.sup.NewComputation(ctx, req); err != nil {
		return err
	}
	cl, err := c.agent()
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
	events := c.sup.Events()
	if err := c.measurer.Manifest(ctx, req); err != nil {
		c.log.Error("manifest not measured into PCR 16", "computation_id", req.GetId(), "err", err)
		events.Event("computation.manifest_measured", "error", "computation_id", req.GetId(), "error", err.Error())
	} else {
		events.Event("computation.manifest_measured", "ok", "computation_id", req.GetId())
	}
	events.Event("computation.started", "ok", "computation_id", req.GetId())
	return nil
}

// Stop asks the agent to stop the computation.
func (c *computations) Stop(ctx context.Context, id string) error {
	cl, err := c.agent()
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
	c.sup.Events().Event("computation.stopped", "ok", "computation_id", id)
	return nil
}

// State returns the agent's state name.
func (c *computations) State(ctx context.Context) (string, error) {
	cl, err := c.agent()
	if err != nil {
		return "", err
	}
	st, err := cl.State(ctx, &agentctl.StateRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(st.GetState()), nil
}
