package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/cocos/zipdir"
	"github.com/cvmd/cvmd/proto/runner"
)

// startRunLocked starts the goroutine that runs the algorithm. resumed says
// the agent restarted in Running: the runner may still hold the old run, so
// it is stopped first. Preconditions: a.mu held, state Running.
func (a *Agent) startRunLocked(resumed bool) {
	if a.closed || a.runCancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.runID++
	id := a.runID
	a.runCancel = cancel
	compID := a.man.ID
	req := &runner.RunRequest{
		ComputationId: compID,
		AlgoType:      a.rec.AlgoType,
		AlgorithmPath: "algo",
		Args:          a.rec.AlgoArgs,
		PythonRuntime: a.rec.PythonRuntime,
	}
	if a.rec.Requirements {
		req.RequirementsPath = "requirements.txt"
	}
	a.runs.Add(1)
	go func() {
		defer a.runs.Done()
		defer cancel()
		runErr := a.run(ctx, req, resumed)
		if ctx.Err() != nil {
			// Stopped or the agent is closing: Stop resets the state, and a
			// closing agent resumes the run when it comes back.
			a.mu.Lock()
			if a.runID == id {
				a.runCancel = nil
			}
			a.mu.Unlock()
			return
		}
		a.finishRun(id, compID, runErr)
	}()
}

// MaxRunAttempts bounds how many times one computation's algorithm is run
// when the runner crashes under it (the first run included).
const MaxRunAttempts = 3

// run does one run: a fresh results dir, the runner, the results zip. A
// crash of the runner during the run (its call ends Unavailable: the
// supervisor killed the algorithm's sandbox with it and restarts it) runs
// the algorithm again in a fresh sandbox, up to MaxRunAttempts in all, with
// a Running/Warning event each time. An algorithm that fails by itself (a
// RunResponse error) is never run again.
func (a *Agent) run(ctx context.Context, req *runner.RunRequest, resumed bool) error {
	if a.cfg.Runner == nil {
		return errors.New("no runner is wired to this agent")
	}
	if resumed {
		if _, err := a.cfg.Runner.Stop(ctx, &runner.StopRequest{ComputationId: req.ComputationId}); err != nil {
			a.log.Info("stopping the previous run before resuming", "err", err)
		}
	}
	for attempt := 1; ; attempt++ {
		err := a.runOnce(ctx, req)
		if err == nil || ctx.Err() != nil || !runnerCrashed(err) {
			return err
		}
		if attempt == MaxRunAttempts {
			return fmt.Errorf("runner crashed during each of %d runs of the algorithm; giving up: %w", MaxRunAttempts, err)
		}
		msg := fmt.Sprintf("runner crashed, re-running algorithm (attempt %d/%d)", attempt+1, MaxRunAttempts)
		a.log.Warn(msg, "computation_id", req.ComputationId, "err", err)
		a.events.Publish(req.ComputationId, string(Running), StatusWarning, "message", msg, "error", err.Error())
	}
}

// runnerCrashed tells a runner that went away during the call (the
// connection broke: its process died) from every other failure.
func runnerCrashed(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// runOnce is one attempt of run.
func (a *Agent) runOnce(ctx context.Context, req *runner.RunRequest) error {
	os.Remove(a.dirs.resultsZip)
	if err := os.RemoveAll(a.dirs.results); err != nil {
		return fmt.Errorf("clearing results: %w", err)
	}
	if err := os.Mkdir(a.dirs.results, 0o777); err != nil {
		return fmt.Errorf("making results dir: %w", err)
	}
	// The algorithm runs as another user in its sandbox: it must be able to
	// write results. Mkdir's mode is filtered by the umask.
	os.Chmod(a.dirs.results, 0o777)
	a.log.Info("running algorithm", "computation_id", req.ComputationId, "algo_type", req.AlgoType, "args", req.Args)
	res, err := a.cfg.Runner.Run(ctx, req, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("runner: %w", err)
	}
	if res.GetError() != "" {
		return errors.New(res.GetError())
	}
	tmp := a.dirs.resultsZip + ".tmp"
	os.Remove(tmp)
	renamed, err := zipdir.WriteResultsFile(tmp, a.dirs.results)
	if err != nil {
		return fmt.Errorf("zipping results: %w", err)
	}
	if err := os.Rename(tmp, a.dirs.resultsZip); err != nil {
		return fmt.Errorf("zipping results: %w", err)
	}
	a.reportRenamed(req.ComputationId, renamed)
	return nil
}

// maxRenamesReported bounds the renames listed in the event and the log
// line (an algorithm can write many files).
const maxRenamesReported = 50

// reportRenamed says which result files had names that were not clean
// relative paths and what they are called in results.zip: one Warning
// event (type ResultsRenamed) for the manager and one log line.
func (a *Agent) reportRenamed(compID string, renamed []zipdir.Renamed) {
	if len(renamed) == 0 {
		return
	}
	pairs := make([]string, 0, min(len(renamed), maxRenamesReported))
	for _, r := range renamed[:min(len(renamed), maxRenamesReported)] {
		pairs = append(pairs, fmt.Sprintf("%q to %q", r.From, r.To))
	}
	list := strings.Join(pairs, ", ")
	if len(renamed) > maxRenamesReported {
		list += fmt.Sprintf(", and %d more", len(renamed)-maxRenamesReported)
	}
	a.log.Warn("results: names that are not clean relative paths were rewritten in results.zip", "computation_id", compID, "renamed", len(renamed), "names", list)
	a.events.Publish(compID, EventResultsRenamed, StatusWarning, "renamed", fmt.Sprint(len(renamed)), "names", list)
}

// finishRun records the outcome of compID's run, publishes it and moves
// the machine on.
func (a *Agent) finishRun(id uint64, compID string, runErr error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runID != id {
		return // a stale run, replaced after a Stop
	}
	a.runCancel = nil
	if a.man == nil || a.man.ID != compID || a.rec.State != Running {
		return
	}
	ev := EvRunComplete
	if runErr != nil {
		a.log.Warn("computation failed", "computation_id", compID, "err", runErr)
		a.rec.RunError = runErr.Error()
		a.events.Publish(compID, string(Running), StatusFailed, "error", runErr.Error())
		ev = EvRunFailed
	} else {
		a.events.Publish(compID, string(Running), StatusCompleted)
	}
	a.removeInputs()
	os.RemoveAll(a.dirs.results)
	if err := a.transitionLocked(ev); err != nil {
		a.log.Error("recording the end of the run", "err", err)
	}
}
