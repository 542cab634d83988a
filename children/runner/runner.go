// Package runner is the computation runner child (`cvmd runner`). It serves
// proto/runner's Run and Stop for the agent: it prepares a run for the
// algorithm's type (a copy of the algorithm, a Python venv, an unpacked
// Docker/OCI image, the wasm runtime), asks the supervisor for a fresh
// algorithm sandbox over its control channel (control.SandboxRequest), gets
// back the fds of the algorithm's stdout, stderr and exit status, streams the
// output line by line to the log forwarder, and reports how the run ended.
//
// The runner never creates a sandbox itself and never imports sandbox/ or
// supervisor/: it names what the algorithm needs with logical paths
// ("computation/...", "work/...", "cvmd") and the supervisor decides. It runs
// unprivileged, with no network; anything that needs the network (pip) runs
// in an algorithm sandbox too, behind the egress proxy.
//
// Only cmd/cvmd and tests import it.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
	pb "github.com/cvmd/cvmd/proto/runner"
)

// Main runs the runner child: Run/Stop on env.Listener() for the agent.
func Main(ctx context.Context, env *child.Env) error {
	var set config.RunnerSettings
	if err := env.Settings(&set); err != nil {
		return err
	}
	work := env.Config.GetStateDir()
	if work == "" {
		return errors.New("runner: no state dir (the work dir) configured")
	}
	comp := set.GetComputationDir()
	if comp == "" {
		comp = filepath.Join(filepath.Dir(filepath.Clean(work)), "computation")
	}
	var events Events = env.Events()
	if s := env.LogSink(); s != nil {
		events = sinkEvents{sink: s}
	}
	svc, err := New(Config{
		WorkDir:        work,
		ComputationDir: comp,
		Settings:       &set,
		Send:           env.Send,
		Log:            env.Log,
		Events:         events,
		OnComputation: func(id string) {
			if s := env.LogSink(); s != nil {
				s.SetComputationID(id)
			}
		},
	})
	if err != nil {
		return err
	}
	env.Intercept(svc.HandleControl)
	srv := grpc.NewServer()
	pb.RegisterRunnerServer(srv, svc)
	ln := env.Listener()
	if err := env.Ready(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		// Stop the run first, so that its Run call can answer the agent
		// ("computation stopped: runner stopping") before the server goes.
		svc.StopAll("runner stopping")
		graceful := make(chan struct{})
		go func() { srv.GracefulStop(); close(graceful) }()
		select {
		case <-graceful:
		case <-time.After(3 * time.Second):
			srv.Stop()
			<-graceful
		}
		<-errc
		return nil
	case err := <-errc:
		svc.StopAll("runner stopping")
		return fmt.Errorf("runner: serving: %w", err)
	}
}

// Events publishes AgentEvents (logsink.Publisher is one).
type Events interface {
	Event(eventType, status string, details ...any) bool
}

// Config is what a Service needs. Paths are as the runner sees them.
type Config struct {
	// WorkDir is the runner's writable work dir: "work/..." to the supervisor.
	WorkDir string
	// ComputationDir is the agent's computation dir (read-only to the
	// runner): "computation/..." to the supervisor.
	ComputationDir string
	Settings       *config.RunnerSettings
	// Send writes a control message to the supervisor (child.Env.Send).
	Send func(*control.Message, map[string]*os.File) error
	Log  *slog.Logger
	// Events receives the AlgorithmRun events; nil = none.
	Events Events
	// OnComputation is called with the computation id when a run starts; nil = nothing.
	OnComputation func(id string)
}

// Service implements runner.Runner. One computation runs at a time.
type Service struct {
	pb.UnimplementedRunnerServer
	cfg     Config
	log     *slog.Logger
	sandbox *sandboxClient

	mu      sync.Mutex
	current *activeRun // guarded by mu; nil when idle
	runSeq  uint64     // guarded by mu
}

type activeRun struct {
	id     string
	cancel context.CancelCauseFunc
}

// New checks cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	if !filepath.IsAbs(cfg.WorkDir) || !filepath.IsAbs(cfg.ComputationDir) {
		return nil, fmt.Errorf("runner: work dir %q and computation dir %q must be absolute", cfg.WorkDir, cfg.ComputationDir)
	}
	if cfg.Send == nil {
		return nil, errors.New("runner: no control channel to send on")
	}
	if cfg.Settings == nil {
		cfg.Settings = &config.RunnerSettings{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	// A new runner has no run yet: a work dir under runs/ is a crashed
	// predecessor's (kill -9 leaves it). The agent may run the same
	// computation again, whose dir would take the same name.
	runs := filepath.Join(cfg.WorkDir, "runs")
	if err := os.RemoveAll(runs); err != nil {
		return nil, fmt.Errorf("runner: removing the work dirs of a previous runner: %w", err)
	}
	return &Service{cfg: cfg, log: cfg.Log, sandbox: newSandboxClient(cfg.Send)}, nil
}

// HandleControl consumes the supervisor's SandboxReply messages (for
// child.Env.Intercept); it takes ownership of files when it returns true.
func (s *Service) HandleControl(msg *control.Message, files map[string]*os.File) bool {
	return s.sandbox.handle(msg, files)
}

// ErrStopped is the cause of a run's end when Stop was called.
var ErrStopped = errors.New("computation stopped")

// Algorithm types (Cocos's algo_type values).
const (
	TypeBin    = "bin"
	TypePython = "python"
	TypeWasm   = "wasm"
	TypeDocker = "docker"
)

// compIDRE checks the characters of a computation id; its length (1 to 128)
// is checked apart: a `{1,128}` repetition compiles into 128 copies, about
// 0.5 ms and 1,800 allocations at package init in every cvmd process.
var compIDRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]+$`)

// Run runs one computation's algorithm to its end. A failure of the
// algorithm is RunResponse.error with an OK status (as in Cocos); a bad
// request is an InvalidArgument status, before anything runs.
func (s *Service) Run(ctx context.Context, req *pb.RunRequest) (*pb.RunResponse, error) {
	switch req.GetAlgoType() {
	case TypeBin, TypePython, TypeWasm, TypeDocker:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "algo_type %q: want bin, python, wasm or docker", req.GetAlgoType())
	}
	id := req.GetComputationId()
	if len(id) > 128 || !compIDRE.MatchString(id) {
		return nil, status.Errorf(codes.InvalidArgument, "computation_id %q: want [A-Za-z0-9_.:-]{1,128}", id)
	}
	algo, err := s.compPath("algorithm_path", req.GetAlgorithmPath(), true)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	reqs := ""
	if req.GetRequirementsPath() != "" {
		if reqs, err = s.compPath("requirements_path", req.GetRequirementsPath(), true); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if py := req.GetPythonRuntime(); py != "" && !pythonRE.MatchString(py) {
		return nil, status.Errorf(codes.InvalidArgument, "python_runtime %q: want python3 or python3.N", py)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	if s.current != nil {
		s.mu.Unlock()
		return &pb.RunResponse{ComputationId: id, Error: "computation already running", ExitCode: -1}, nil
	}
	s.runSeq++
	seq := s.runSeq
	s.current = &activeRun{id: id, cancel: cancel}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.current = nil
		s.mu.Unlock()
	}()
	if s.cfg.OnComputation != nil {
		s.cfg.OnComputation(id)
	}
	log := s.log.With("computation_id", id)
	r := &run{svc: s, log: log, req: req, algo: algo, requirements: reqs,
		workRel: fmt.Sprintf("runs/%s-%d", strings.ReplaceAll(id, ":", "_"), seq)}
	r.workDir = filepath.Join(s.cfg.WorkDir, r.workRel)
	if err := os.MkdirAll(r.workDir, 0o755); err != nil {
		return nil, status.Errorf(codes.Internal, "runner: making work dir: %v", err)
	}
	defer func() {
		if err := os.RemoveAll(r.workDir); err != nil {
			log.Warn("removing the run's work dir", "err", err)
		}
	}()
	log.Info("running algorithm", "algo_type", req.GetAlgoType())
	s.event(id, "Running", "algo_type", req.GetAlgoType())
	exit, err := r.do(ctx)
	resp := &pb.RunResponse{ComputationId: id, ExitCode: -1}
	if exit != nil {
		resp.ExitCode = exit.GetExitCode()
	}
	if err != nil {
		resp.Error = err.Error()
		log.Warn("algorithm failed", "err", err)
		s.event(id, "Failed", "error", err.Error())
	} else {
		log.Info("algorithm finished")
		s.event(id, "Completed")
	}
	return resp, nil
}

var pythonRE = regexp.MustCompile(`^python3(\.[0-9]{1,2})?$`)

// Stop stops the computation's run, if it is the one running.
func (s *Service) Stop(ctx context.Context, req *pb.StopRequest) (*pb.StopResponse, error) {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur != nil && (req.GetComputationId() == "" || req.GetComputationId() == cur.id) {
		cur.cancel(ErrStopped)
	}
	return &pb.StopResponse{}, nil
}

// StopAll stops whatever runs (the runner is stopping).
func (s *Service) StopAll(reason string) {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur != nil {
		cur.cancel(fmt.Errorf("%w: %s", ErrStopped, reason))
	}
}

func (s *Service) event(compID, status string, details ...any) {
	if s.cfg.Events != nil {
		s.cfg.Events.Event("AlgorithmRun", status, append([]any{"computation_id", compID}, details...)...)
	}
}

// compPath checks a path relative to the computation dir and returns its
// logical form "computation/<rel>". Cocos's agent sends absolute paths
// under its working dir (/cocos/algo): only the base name of those counts.
func (s *Service) compPath(field, p string, mustExist bool) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%s: empty", field)
	}
	if path.IsAbs(p) {
		p = path.Base(p)
	}
	if path.Clean(p) != p || p == "." || strings.HasPrefix(p, "../") || p == ".." {
		return "", fmt.Errorf("%s %q: want a clean path inside the computation dir", field, p)
	}
	if mustExist {
		if _, err := os.Stat(filepath.Join(s.cfg.ComputationDir, p)); err != nil {
			return "", fmt.Errorf("%s %q: %v", field, p, err)
		}
	}
	return "computation/" + p, nil
}
