package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc"

	cmanifest "github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/pull"
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
	// settings are the children's settings input (the environment: the
	// object stores the pull grant names).
	settings table.SettingsInput
	// grantFile keeps the active computation's pull grant across restarts
	// of the egress and of the supervisor itself (the agent resumes a
	// computation on its own, and its fetch must still be allowed).
	grantFile string

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
	if err := c.grant(ctx, req); err != nil {
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

// grant gives the agent, in the egress, exactly the hosts its pull mode
// needs for req (the declared sources and KBSes; never to the algorithm's
// sandboxes, whose client names differ); none revokes the last one. The
// SSRF guard still applies to every granted host.
func (c *computations) grant(ctx context.Context, req *cvms.ComputationRunReq) error {
	man, _, err := cmanifest.FromRunReq(req)
	if err != nil {
		return fmt.Errorf("supervisor: computation %s: %w", req.GetId(), err)
	}
	entries, err := pull.Grant(man, pull.EndpointsFrom(table.PullSettings(&c.settings)))
	if err != nil {
		return fmt.Errorf("supervisor: computation %s: %w", req.GetId(), err)
	}
	return c.setGrant(ctx, req.GetId(), entries)
}

// savedGrant is grantFile's content.
type savedGrant struct {
	ComputationID string   `json:"computation_id"`
	Client        string   `json:"client"`
	Entries       []string `json:"entries"`
}

// currentGrant is the saved grant (table.SettingsInput.PullGrant).
func (c *computations) currentGrant() map[string][]string {
	b, err := os.ReadFile(c.grantFile)
	if err != nil {
		return nil
	}
	var g savedGrant
	if err := json.Unmarshal(b, &g); err != nil || g.Client == "" {
		c.log.Warn("pull grant file unreadable: not granted", "file", c.grantFile, "err", err)
		return nil
	}
	return map[string][]string{g.Client: g.Entries}
}

func (c *computations) setGrant(ctx context.Context, id string, entries []string) error {
	tab := c.sup.Table()
	client := tab.WithRole(table.RoleComputations)
	if c.grantFile != "" {
		if len(entries) == 0 {
			os.Remove(c.grantFile)
		} else {
			b, _ := json.Marshal(savedGrant{ComputationID: id, Client: client, Entries: entries})
			tmp := c.grantFile + ".tmp"
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				return fmt.Errorf("supervisor: saving the pull grant: %w", err)
			}
			if err := os.Rename(tmp, c.grantFile); err != nil {
				return fmt.Errorf("supervisor: saving the pull grant: %w", err)
			}
		}
	}
	msg := &config.EgressSetGrant{Client: client, ComputationId: id, Entries: entries}
	if _, err := c.sup.Command(ctx, tab.WithRole(table.RoleAlgorithmProxy), msg); err != nil {
		if len(entries) == 0 {
			return nil // nothing was granted (or the egress is gone with it)
		}
		return fmt.Errorf("supervisor: granting computation %s its sources %v: %w", id, entries, err)
	}
	if len(entries) > 0 {
		c.log.Info("pull grant", "computation_id", id, "client", client, "entries", strings.Join(entries, " "))
		c.sup.Events().Event("computation.pull_granted", "ok", "computation_id", id, "entries", strings.Join(entries, " "))
	}
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
	if err := c.setGrant(ctx, id, nil); err != nil {
		c.log.Warn("revoking the pull grant", "computation_id", id, "err", err)
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
