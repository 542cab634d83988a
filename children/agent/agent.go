// Package agent is the agent child (`cvmd agent`): the computation's state
// machine and the CLI-facing agent.AgentService, wire-compatible with Cocos,
// plus cvmd's opt-in role challenges (cvmd.rolechallenge.v1.RoleChallenge,
// challenge.go), which bind a role signature to one request.
//
// It receives a manifest from the supervisor (agentctl.Control, served only
// on the supervisor's own edge), then the algorithm and datasets from the
// CLI (through the ingress child), streams each upload to the computation
// directory while hashing it (SHA3-256), runs the algorithm through the
// runner child, zips the results deterministically and streams them to the
// declared consumers. Every transition is an event; the state and accepted
// files live in the state dir, so a restarted agent resumes.
//
// Remote sources (Cocos's "pull mode") are fetched through the egress
// child with package pull, as the entry actions of ReceivingAlgorithm and
// ReceivingData (pull.go). Cocos's azure-token posts the attestation
// child's evidence to Microsoft Azure Attestation through the egress too
// (azuretoken.go).
//
// It does not open sockets, run algorithms itself, or produce evidence (the
// attestation child does). It imports children/child, logsink, proto, pull,
// attest/maa (the MAA client, standard library only) and the shared helpers (cocos/manifest, rolesig, zipdir, digest); never
// supervisor/, sandbox/ or another child.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest/maa"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/runner"
	"github.com/cvmd/cvmd/pull"
)

// Config is what an Agent is built from.
type Config struct {
	// StateDir is where the agent keeps its state file and the results zip.
	// Required.
	StateDir string
	// Settings; nil means all defaults (see proto/config/agent.proto).
	Settings *config.AgentSettings
	// Runner runs the algorithm. nil: every run fails with a clear error.
	Runner runner.RunnerClient
	// Attestation produces evidence. nil: the Attestation RPC says it is
	// not available.
	Attestation attestation.AttestationClient
	// Events receives state events. nil: they are logged.
	Events logsink.Publisher
	// SetComputationID, if set, is told the computation id whenever it
	// changes (the child's log sink stamps it on records).
	SetComputationID func(string)
	// MAA is the Microsoft Azure Attestation client for azure-token, its
	// HTTP client going through the egress; nil: azure-token is refused.
	MAA *maa.Client
	// Pull configures fetching remote sources (Dir and MaxBytes are the
	// agent's own); nil: manifests with remote sources are refused.
	Pull *pull.Config
	// Log; nil discards.
	Log *slog.Logger
}

// Agent is one agent's computation state and services.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	lim    limits
	dirs   dirs
	events *eventQueue

	uploads    chan struct{} // a slot per upload being received (maxUploads)
	challenges *challenges   // role-signature nonces offered
	admit      *admission    // the public server's budget of unauthenticated streams
	fetcher    *pull.Fetcher // nil: no pull mode

	runs  sync.WaitGroup
	pulls sync.WaitGroup

	mu         sync.Mutex
	rec        *record                 // guarded by mu
	man        *manifest.Computation   // guarded by mu; nil before a manifest
	runReq     *cvms.ComputationRunReq // guarded by mu
	keys       *manifest.Keys          // guarded by mu
	runCancel  context.CancelFunc      // guarded by mu; non-nil while the current run goroutine lives
	runID      uint64                  // guarded by mu; which run runCancel belongs to
	names      []string                // guarded by mu; datasets' names in datasets/ ("" = matched by hash)
	pullCancel context.CancelFunc      // guarded by mu; non-nil while a fetch goroutine lives
	closed     bool                    // guarded by mu
}

type limits struct {
	maxAlgorithm, maxDataset, minFree, maxUnzipped int64
	maxZipEntries                                  int
	imaPath, pcr10Path                             string
	requireChallenge                               bool
}

// dirs is the computation layout shared with the runner.
type dirs struct {
	state, comp, incoming, datasets, results, pull string
	algo, requirements, resultsZip                 string
}

func newDirs(state, comp string) dirs {
	return dirs{
		state: state, comp: comp,
		incoming:     filepath.Join(comp, ".incoming"),
		pull:         filepath.Join(comp, ".pull"), // kept across restarts: downloads resume
		datasets:     filepath.Join(comp, "datasets"),
		results:      filepath.Join(comp, "results"),
		algo:         filepath.Join(comp, "algo"),
		requirements: filepath.Join(comp, "requirements.txt"),
		resultsZip:   filepath.Join(state, "results.zip"),
	}
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// New loads the saved state from cfg.StateDir (or starts Idle), clears any
// half-received upload, and resumes: a computation that was running is run
// again.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: no state dir")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Events == nil {
		cfg.Events = logsink.LogPublisher(cfg.Log, "agent")
	}
	s := cfg.Settings
	if s == nil {
		s = &config.AgentSettings{}
	}
	a := &Agent{cfg: cfg, log: cfg.Log, uploads: make(chan struct{}, maxUploads), challenges: newChallenges(), admit: newAdmission()}
	a.lim = limits{
		maxAlgorithm:  int64(orDefault(s.GetMaxAlgorithmBytes(), 4<<30)),
		maxDataset:    int64(orDefault(s.GetMaxDatasetBytes(), 64<<30)),
		minFree:       int64(orDefault(s.GetMinFreeBytes(), 64<<20)),
		maxZipEntries: int(orDefault(s.GetMaxZipEntries(), 10000)),
		imaPath:       orDefault(s.GetImaMeasurementsPath(), "/sys/kernel/security/integrity/ima/ascii_runtime_measurements"),
		pcr10Path:     orDefault(s.GetPcr10Path(), "/sys/class/tpm/tpm0/pcr-sha1/10"),

		requireChallenge: s.GetRequireRoleChallenge(),
	}
	a.lim.maxUnzipped = int64(orDefault(s.GetMaxUnzippedBytes(), uint64(a.lim.maxDataset)))
	a.dirs = newDirs(cfg.StateDir, orDefault(s.GetComputationDir(), filepath.Join(cfg.StateDir, "computation")))
	for _, d := range []string{a.dirs.state, a.dirs.comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	// Whatever was being received when the last agent died is incomplete.
	if err := os.RemoveAll(a.dirs.incoming); err != nil {
		return nil, fmt.Errorf("agent: clearing partial uploads: %w", err)
	}
	if err := os.Mkdir(a.dirs.incoming, 0o700); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var err error
	if cfg.Pull != nil {
		pc := *cfg.Pull
		pc.Dir = a.dirs.pull
		pc.MaxBytes = max(a.lim.maxAlgorithm, a.lim.maxDataset)
		pc.CheckSpace = func(need int64) error {
			// The download must leave min_free_bytes free, as an upload must.
			os.MkdirAll(a.dirs.pull, 0o700)
			r, err := room(a.dirs.pull, a.lim.minFree)
			if err != nil {
				return err
			}
			if r < max(need, 0) {
				return fmt.Errorf("%w: fetching would leave less than min_free_bytes %d free (%d bytes of room, %d still to come)", ErrNoSpace, a.lim.minFree, max(r, 0), need)
			}
			return nil
		}
		if pc.Log == nil {
			pc.Log = cfg.Log
		}
		if pc.Progress == nil {
			pc.Progress = func(p pull.Progress) {
				cfg.Log.Info("fetch progress", "resource", p.What, "source", p.Source, "bytes", p.Bytes, "total", p.Total)
			}
		}
		if a.fetcher, err = pull.New(pc); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	rec, runReq, err := loadRecord(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.events = newEventQueue(cfg.Events)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rec = rec
	if runReq != nil {
		man, _, err := manifest.FromRunReq(runReq)
		if err != nil {
			return nil, fmt.Errorf("agent: saved manifest: %w", err)
		}
		keys, err := man.ParseKeys()
		if err != nil {
			return nil, fmt.Errorf("agent: saved manifest: %w", err)
		}
		names, err := datasetNames(man)
		if err != nil {
			return nil, fmt.Errorf("agent: saved manifest: %w", err)
		}
		a.man, a.runReq, a.keys, a.names = man, runReq, keys, names
		a.rec.fillReceivedIdx(names)
		a.setComputationID(man.ID)
		a.log.Info("resuming computation", "computation_id", man.ID, "state", rec.State)
	}
	if a.rec.State == ReceivingData {
		a.dropUnrecorded()
	}
	if a.rec.State == Idle {
		// As Cocos: an idle agent immediately waits for a manifest.
		if err := a.transitionLocked(EvStart); err != nil {
			return nil, err
		}
	}
	if a.rec.State == Running {
		a.startRunLocked(true)
	}
	a.startPullsLocked() // a fetch that was under way resumes
	return a, nil
}

// Close stops a running computation's goroutine (the computation itself
// stays Running in the state file, so the next agent resumes it) and
// delivers queued events, bounded by ctx.
func (a *Agent) Close(ctx context.Context) {
	a.mu.Lock()
	a.closed = true
	if a.runCancel != nil {
		a.runCancel()
	}
	a.mu.Unlock()
	a.runs.Wait()
	a.stopPulls()
	a.events.Close(ctx)
}

// State returns the current state and computation id.
func (a *Agent) State() (State, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := ""
	if a.man != nil {
		id = a.man.ID
	}
	return a.rec.State, id
}

func (a *Agent) setComputationID(id string) {
	if a.cfg.SetComputationID != nil {
		a.cfg.SetComputationID(id)
	}
}

// transitionLocked applies ev, saves the new state and publishes its entry
// events. Preconditions: a.mu held. An event that does not apply is an
// error for the caller and leaves the machine as it was.
func (a *Agent) transitionLocked(ev Event) error {
	from := a.rec.State
	to, ok := next(from, ev, a.man != nil && len(a.man.Datasets) > 0)
	if !ok {
		return fmt.Errorf("%w: event %s in state %s", ErrWrongState, ev, from)
	}
	a.rec.State = to
	if err := a.rec.save(a.dirs.state); err != nil {
		a.rec.State = from
		return err
	}
	a.log.Info("state changed", "from", from, "event", ev, "to", to)
	for _, e := range entryEvents(to) {
		a.events.Publish(a.compIDLocked(), e[0], e[1])
	}
	switch to {
	case Running:
		a.startRunLocked(false)
	case ReceivingAlgorithm, ReceivingData:
		a.startPullsLocked()
	}
	return nil
}

// Start accepts a computation manifest (the supervisor's agentctl.Start).
// The same computation delivered again is accepted silently, as Cocos does
// after a reconnect.
func (a *Agent) Start(req *cvms.ComputationRunReq) error {
	man, _, err := manifest.FromRunReq(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := a.checkPull(man); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	names, _ := datasetNames(man) // checked by checkPull
	keys, err := man.ParseKeys()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rec.State != ReceivingManifest {
		if a.man != nil && a.man.ID == man.ID && proto.Equal(a.runReq, req) {
			return nil
		}
		cur := "none"
		if a.man != nil {
			cur = a.man.ID
		}
		return fmt.Errorf("%w: computation %q is %s; stop it first", ErrBusy, cur, a.rec.State)
	}
	for _, d := range []string{a.dirs.comp, a.dirs.datasets} {
		// Readable by the runner and the algorithm's sandbox, which may run
		// as other users; the state dir itself stays private.
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	b, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	a.rec.Manifest = b
	a.man, a.runReq, a.keys, a.names = man, req, keys, names
	a.setComputationID(man.ID)
	if err := a.transitionLocked(EvManifestReceived); err != nil {
		a.rec.Manifest, a.man, a.runReq, a.keys, a.names = nil, nil, nil, nil, nil
		return err
	}
	return nil
}

// Stop ends the current computation whatever its state, deletes its files
// and goes back to waiting for a manifest. id may be empty (any).
func (a *Agent) Stop(ctx context.Context, id string) error {
	a.mu.Lock()
	if a.man == nil {
		a.mu.Unlock()
		return fmt.Errorf("%w: nothing to stop", ErrNoComputation)
	}
	if id != "" && id != a.man.ID {
		cur := a.man.ID
		a.mu.Unlock()
		return fmt.Errorf("%w: computation %q is not %q", ErrNoComputation, id, cur)
	}
	compID := a.man.ID
	cancel := a.runCancel
	a.mu.Unlock()
	a.stopPulls()
	a.events.Publish(compID, StatusStopped, StatusStopped)
	if cancel != nil {
		cancel()
		if a.cfg.Runner != nil {
			sctx, c := context.WithTimeout(ctx, 10*time.Second)
			if _, err := a.cfg.Runner.Stop(sctx, &runner.StopRequest{ComputationId: compID}); err != nil {
				a.log.Warn("runner stop", "err", err)
			}
			c()
		}
	}
	a.runs.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runCancel != nil {
		// An upload completed the inputs while we waited and started a run
		// of the computation being stopped: cancel it too. Its goroutine
		// ends on its own; forgetting it here lets the next run start.
		a.runCancel()
		a.runCancel = nil
	}
	a.removeInputs()
	os.RemoveAll(a.dirs.results)
	os.Remove(a.dirs.resultsZip)
	a.rec = &record{State: Idle}
	a.man, a.runReq, a.keys, a.names = nil, nil, nil, nil
	a.setComputationID("")
	if err := a.rec.save(a.dirs.state); err != nil {
		return err
	}
	a.log.Info("computation stopped", "computation_id", compID)
	return a.transitionLocked(EvStart)
}

// removeInputs deletes the algorithm and datasets (after a run, as Cocos).
func (a *Agent) removeInputs() {
	os.Remove(a.dirs.algo)
	os.Remove(a.dirs.requirements)
	os.RemoveAll(a.dirs.datasets)
	a.cleanupStaging()
}

// dropUnrecorded removes from the datasets dir what a killed agent installed
// but had not recorded, so that the client's retry is accepted.
// Preconditions: a.mu held.
func (a *Agent) dropUnrecorded() {
	ents, _ := os.ReadDir(a.dirs.datasets)
	for _, e := range ents {
		if !slices.Contains(a.rec.Entries, e.Name()) {
			a.log.Warn("removing an unrecorded dataset entry", "name", e.Name())
			os.RemoveAll(filepath.Join(a.dirs.datasets, e.Name()))
		}
	}
}

// compIDLocked is the current computation's id, or "". Preconditions: a.mu held.
func (a *Agent) compIDLocked() string {
	if a.man == nil {
		return ""
	}
	return a.man.ID
}
