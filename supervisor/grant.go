package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/supervisor/table"
)

// The pull grant lives as long as its computation: it is given when the
// agent is about to take the computation (Start), and taken back when the
// computation ends whichever way — its results consumed, a failure, a
// Stop, a start that did not happen, the next computation — and it is
// renewed at a supervisor's start only for the computation the agent
// resumes, still under way.

// grantPoll is how often followGrant asks the agent about the granted
// computation.
const grantPoll = time.Second

// loadGrant reads grantFile; nil when there is none (or it is unreadable,
// which grants nothing).
func (c *computations) loadGrant() *savedGrant {
	if c.grantFile == "" {
		return nil
	}
	b, err := os.ReadFile(c.grantFile)
	if err != nil {
		return nil
	}
	var g savedGrant
	if err := json.Unmarshal(b, &g); err != nil || g.Client == "" {
		c.log.Warn("pull grant file unreadable: not granted", "file", c.grantFile, "err", err)
		return nil
	}
	return &g
}

// resumedGrant is the saved grant if the agent's record says it resumes
// that computation, still under way; otherwise the file is removed (and
// nil returned). This is what a starting supervisor gives the egress, before
// the agent runs, so the agent's resumed fetches are allowed from its
// first request and a grant of an ended computation never comes back.
func (c *computations) resumedGrant() *savedGrant {
	c.grantMu.Lock()
	defer c.grantMu.Unlock()
	g := c.loadGrant()
	if g == nil || c.grantChecked {
		return g
	}
	c.grantChecked = true
	id, underWay, err := c.tab.ResumedComputation(c.state)
	if err == nil && id == g.ComputationID && underWay {
		c.log.Info("pull grant renewed: the agent resumes its computation", "computation_id", id)
		return g
	}
	why := fmt.Sprintf("the agent resumes computation %q, under way: %v", id, underWay)
	if err != nil {
		why = fmt.Sprintf("the agent's record is unreadable (%v)", err)
	}
	c.dropGrantLocked(g.ComputationID, "not renewed: "+why)
	return nil
}

// dropGrantLocked removes the grant file and says so; grantMu is held.
func (c *computations) dropGrantLocked(id, why string) {
	c.writeGrantLocked(savedGrant{})
	c.announceRevoked(id, why)
}

// announceRevoked logs that computation id's grant was taken back, and why,
// and tells the manager (once the supervisor runs).
func (c *computations) announceRevoked(id, why string) {
	c.log.Info("pull grant revoked", "computation_id", id, "why", why)
	if c.sup == nil {
		// Before the supervisor runs (its first egress settings): followGrant says it.
		c.unannounced = append(c.unannounced, [2]string{id, why})
		return
	}
	c.sup.Events().Event("computation.pull_revoked", "ok", "computation_id", id, "why", why)
}

// revokeGrant takes back the grant of computation id ("": whichever) if it
// is still the current one, unchanged since generation gen (0: whichever),
// in the file and then in the egress.
func (c *computations) revokeGrant(ctx context.Context, id string, gen uint64, why string) {
	c.grantOpMu.Lock()
	defer c.grantOpMu.Unlock()
	c.grantMu.Lock()
	g := c.loadGrant()
	if g == nil || (id != "" && g.ComputationID != id) || (gen != 0 && gen != c.grantGen) {
		c.grantMu.Unlock()
		return
	}
	c.dropGrantLocked(g.ComputationID, why)
	c.grantMu.Unlock()
	if err := c.sendGrant(ctx, g.ComputationID, nil); err != nil {
		c.log.Warn("revoking the pull grant in the egress", "computation_id", g.ComputationID, "err", err)
	}
}

// followGrant watches the agent while a grant is held and revokes it once
// the agent no longer runs that computation under way (ended, failed,
// stopped, or replaced), until ctx ends. A start in progress is left
// alone: it sets the grant before the agent has the computation.
func (c *computations) followGrant(ctx context.Context) {
	c.grantMu.Lock()
	early := c.unannounced
	c.unannounced = nil
	c.grantMu.Unlock()
	for _, r := range early {
		c.sup.Events().Event("computation.pull_revoked", "ok", "computation_id", r[0], "why", r[1])
	}
	tick := time.NewTicker(grantPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.grantMu.Lock()
		g, gen, starting := c.loadGrant(), c.grantGen, c.starting
		c.grantMu.Unlock()
		if g == nil || starting > 0 {
			continue
		}
		cl, err := c.agent()
		if err != nil {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := cl.State(actx, &agentctl.StateRequest{})
		cancel()
		if err != nil {
			continue // the agent is restarting: it resumes from its record
		}
		if st.GetComputationId() == g.ComputationID && table.UnderWay(st.GetState()) {
			continue
		}
		why := fmt.Sprintf("the agent's computation is %q in state %s", st.GetComputationId(), st.GetState())
		c.revokeGrant(ctx, g.ComputationID, gen, why)
	}
}
