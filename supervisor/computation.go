package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	cmanifest "github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
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
	sup          *lifecycle.Supervisor
	measurer     *measure.Measurer
	log          *slog.Logger
	startTimeout time.Duration // 0: defaultStartTimeout
	// settings are the children's settings input (the environment: the
	// object stores the pull grant names).
	settings table.SettingsInput
	// grantFile keeps the active computation's pull grant across restarts
	// of the egress and of the supervisor itself (the agent resumes a
	// computation on its own, and its fetch must still be allowed); see
	// grant.go for its lifetime.
	grantFile string
	// tab and state (--state) say where the agent keeps the record of the
	// computation it resumes (resumedGrant), before the supervisor runs.
	tab   *table.Table
	state string

	grantOpMu    sync.Mutex  // serializes changes of the grant (file, then egress)
	grantMu      sync.Mutex  // guards the grant file's content and the fields below; never held across a command
	grantGen     uint64      // guarded by grantMu; counts changes of the grant file
	grantChecked bool        // guarded by grantMu; resumedGrant has checked the saved grant
	starting     int         // guarded by grantMu; starts in progress
	unannounced  [][2]string // guarded by grantMu; revocations (id, why) before the supervisor ran

	atlsMu  sync.Mutex
	atls    int32 // guarded by atlsMu; see refreshATLS
	atlsErr error // guarded by atlsMu
	asked   bool  // guarded by atlsMu

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

// defaultStartTimeout bounds a computation's start (--start-timeout): the
// manager hears why it did not start rather than nothing. It covers a
// start during boot under TCG (up to ~80 s to every child READY here).
const defaultStartTimeout = 3 * time.Minute

// Start begins a computation, and whatever fails on the way is the error
// the manager gets as RunResponse.error, within the start timeout: a
// computation asking for aTLS on a VM without an attestation platform, an
// AgentConfig the ingress would refuse (both from the children's settings,
// lifecycle.Supervisor.NewComputation), a child that failed or is not
// READY in time (named with how it last ended), the agent refusing the
// manifest. The children are prepared first (per-computation ones
// restarted with its settings), the manifest goes to the agent once every
// child is READY, and once the agent accepted it the manifest is measured.
func (c *computations) Start(ctx context.Context, req *cvms.ComputationRunReq) error {
	timeout := c.startTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.start(ctx, req, timeout); err != nil {
		if ctx.Err() != nil && !errors.Is(err, errNotReady) {
			return fmt.Errorf("supervisor: computation %s did not start within %v: %w", req.GetId(), timeout, err)
		}
		return err
	}
	return nil
}

func (c *computations) start(ctx context.Context, req *cvms.ComputationRunReq, timeout time.Duration) error {
	if req.GetAgentConfig().GetAttestedTls() {
		c.refreshATLS(ctx)
	}
	before, err := c.sup.Children(ctx)
	if err != nil {
		return fmt.Errorf("supervisor: computation %s: %w", req.GetId(), err)
	}
	if err := c.sup.NewComputation(ctx, req); err != nil {
		return err
	}
	if err := c.waitReady(ctx, before, timeout); err != nil {
		return fmt.Errorf("supervisor: computation %s: %w", req.GetId(), err)
	}
	// The egress is READY now: it takes the grant. While the agent is being
	// given the computation, followGrant leaves the grant alone; if the
	// agent does not take it, the grant goes.
	c.grantMu.Lock()
	c.starting++
	c.grantMu.Unlock()
	defer func() {
		c.grantMu.Lock()
		c.starting--
		c.grantMu.Unlock()
	}()
	err = c.grant(ctx, req)
	if err == nil {
		err = c.startOnAgent(ctx, req)
	}
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		c.revokeGrant(rctx, req.GetId(), 0, "the computation did not start")
		return err
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

// startOnAgent gives the agent the computation.
func (c *computations) startOnAgent(ctx context.Context, req *cvms.ComputationRunReq) error {
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
	return nil
}

// errNotReady wraps the answer of a start whose children were not all
// READY in time: it already says how long was waited.
var errNotReady = errors.New("not every child is READY")

// readyPoll is how often waitReady looks at the children.
const readyPoll = 100 * time.Millisecond

// waitReady waits until every child is READY, the per-computation ones in
// an incarnation newer than in before (restarted for this computation). A
// failed child ends the wait at once; ctx ending (the start timeout) ends
// it with the children still not READY, each with its status and how it
// last ended.
func (c *computations) waitReady(ctx context.Context, before []lifecycle.ChildInfo, timeout time.Duration) error {
	gen := map[string]uint32{}
	for _, ci := range before {
		gen[ci.Name] = ci.Generation
	}
	for {
		// Children goes through the loop: bound it by ctx, and keep the
		// last answer for the refusal.
		cs, err := c.sup.Children(ctx)
		if err != nil {
			return fmt.Errorf("%w within %v: the supervisor did not say which (%v)", errNotReady, timeout, err)
		}
		var waiting []string
		for _, ci := range cs {
			perComputation := c.sup.Table().Child(ci.Name).Scope == table.PerComputation
			switch {
			case ci.Status == lifecycle.StatusFailed:
				return fmt.Errorf("child %s failed after %d restarts (last exit: %s)", ci.Name, ci.Restarts, orNone(ci.LastExit))
			case ci.Status == lifecycle.StatusReady && (!perComputation || ci.Generation > gen[ci.Name]):
			default:
				w := fmt.Sprintf("%s %s", ci.Name, ci.Status)
				if ci.LastExit != "" {
					w += " (last exit: " + ci.LastExit + ")"
				}
				waiting = append(waiting, w)
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w within %v: %s", errNotReady, timeout, strings.Join(waiting, ", "))
		case <-time.After(readyPoll):
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// refreshATLS asks the attestation child which platform aTLS evidence
// would be made for, or what the VM lacks, and keeps the answer for the
// ingress's settings (table.SettingsInput.ATLS). It waits for the child
// while it starts, up to ctx.
func (c *computations) refreshATLS(ctx context.Context) {
	child := c.sup.Table().WithRole(table.RoleMeasurements)
	out, err := commandWhenUp(ctx, c.sup, child, &attestpb.StatusRequest{})
	var platform int32
	if err == nil {
		r, ok := out.(*attestpb.StatusReply)
		switch {
		case !ok:
			err = fmt.Errorf("supervisor: %s answered %T, want StatusReply", child, out)
		case r.GetNoPlatform() != "":
			err = fmt.Errorf("attestation: no platform: %s", r.GetNoPlatform())
		default:
			platform = r.GetAtlsPlatformType()
		}
	} else {
		err = fmt.Errorf("the %s child did not say which platform it attests with: %w", child, err)
	}
	c.atlsMu.Lock()
	c.atls, c.atlsErr, c.asked = platform, err, true
	c.atlsMu.Unlock()
}

// atlsPlatform is the last answer of refreshATLS.
func (c *computations) atlsPlatform() (int32, error) {
	c.atlsMu.Lock()
	defer c.atlsMu.Unlock()
	if !c.asked {
		return 0, errors.New("the attestation child was not asked which platform it attests with")
	}
	return c.atls, c.atlsErr
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

// currentGrant is the saved grant (table.SettingsInput.PullGrant); at the
// supervisor's start only if the agent resumes its computation
// (resumedGrant).
func (c *computations) currentGrant() map[string][]string {
	g := c.resumedGrant()
	if g == nil {
		return nil
	}
	return map[string][]string{g.Client: g.Entries}
}

// setGrant makes entries computation id's grant (none: no grant), in the
// file and then in the egress.
func (c *computations) setGrant(ctx context.Context, id string, entries []string) error {
	c.grantOpMu.Lock()
	defer c.grantOpMu.Unlock()
	client := c.sup.Table().WithRole(table.RoleComputations)
	c.grantMu.Lock()
	old := c.loadGrant()
	err := c.writeGrantLocked(savedGrant{ComputationID: id, Client: client, Entries: entries})
	c.grantMu.Unlock()
	if err != nil {
		return err
	}
	if old != nil && old.ComputationID != id {
		c.announceRevoked(old.ComputationID, fmt.Sprintf("computation %s started", id))
	}
	return c.sendGrant(ctx, id, entries)
}

// writeGrantLocked saves g (no entries: removes the file); grantMu is held.
func (c *computations) writeGrantLocked(g savedGrant) error {
	c.grantGen++
	if c.grantFile == "" {
		return nil
	}
	if len(g.Entries) == 0 {
		os.Remove(c.grantFile)
		return nil
	}
	b, _ := json.Marshal(g)
	tmp := c.grantFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("supervisor: saving the pull grant: %w", err)
	}
	if err := os.Rename(tmp, c.grantFile); err != nil {
		return fmt.Errorf("supervisor: saving the pull grant: %w", err)
	}
	return nil
}

// sendGrant gives the egress computation id's grant (none: revokes it).
func (c *computations) sendGrant(ctx context.Context, id string, entries []string) error {
	tab := c.sup.Table()
	client := tab.WithRole(table.RoleComputations)
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
	c.revokeGrant(ctx, "", 0, "stopped")
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
