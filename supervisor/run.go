package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	attestpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/algosandbox"
	"github.com/cvmd/cvmd/supervisor/lifecycle"
	"github.com/cvmd/cvmd/supervisor/manager"
	"github.com/cvmd/cvmd/supervisor/measure"
	"github.com/cvmd/cvmd/supervisor/table"
)

// runProper is the supervisor proper. It builds every part explicitly and
// connects them: the sandbox runtime (which removes what a crashed
// predecessor left), the algorithm sandboxes, the measurer, the child
// lifecycle loop, and the manager link, which the loop runs for its whole
// life. The parts that need the loop (the measurer's commands, the
// algorithm proxy's listeners, the link) reach it through sup, set before
// any of them runs.
func runProper(o *options, log *slog.Logger) error {
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer cancel()
	if err := os.MkdirAll(o.runDir, 0o700); err != nil {
		return fmt.Errorf("supervise: run dir: %w", err)
	}
	tab := o.table()
	if testBuild {
		log.Warn("TEST BUILD (-tags cvmdtest): test switches compiled in; never measure or deploy this binary")
	}
	misbehave := map[string]string{}
	for _, kv := range strings.Split(o.misbehave, ",") {
		if name, mode, ok := strings.Cut(kv, "="); ok {
			misbehave[name] = mode
			log.Warn("TEST ONLY: child replaced by a misbehaving probe", "child", name, "mode", mode)
		}
	}
	files := map[string]*os.File{}
	listenAddr := ""
	if wantsFD(tab, "listen") {
		ln, addr, err := listenTCP(o.listen)
		if err != nil {
			return err
		}
		defer ln.Close()
		files["listen"], listenAddr = ln, addr
	}
	rt, err := sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: filepath.Join(o.runDir, "sandbox"), CgroupRoot: o.cgroupRoot})
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	defer func() {
		if err := rt.Close(); err != nil {
			log.Warn("closing sandbox runtime", "err", err)
		}
	}()

	// The state directory's storage (the scratch disk or memory) sizes the
	// results cap, the agent's floor and the log queue, and is measured.
	storage := storageOf(o.state, o.algo.ResultsBytes)
	var sup *lifecycle.Supervisor
	proxy := tab.WithRole(table.RoleAlgorithmProxy)
	algo, err := algosandbox.New(o.algoConfig(rt, storage, func(edge string, ln *os.File) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// The proxy listener goes to egress like any rewired fd.
		return sup.Donate(ctx, proxy, edge, ln)
	}, log.With("part", "algorithm-sandboxes")))
	var sandboxes lifecycle.Sandboxes
	if err != nil {
		log.Error("algorithm sandboxes unavailable", "err", err)
	} else {
		sandboxes = algo
	}
	measurements := tab.WithRole(table.RoleMeasurements)
	measurer := measure.New(func(ctx context.Context, body proto.Message) (proto.Message, error) {
		return sup.Command(ctx, measurements, body)
	}, log)
	environment := manager.GuestEnvironment(o.env, o.dev)
	mode, source := o.attestationMode(environment, log)
	tab.Attestation = mode
	log.Info("attestation mode", "mode", mode, "from", source)
	comps := &computations{measurer: measurer, log: log, startTimeout: o.startTimeout,
		settings:  table.SettingsInput{Attestation: mode, Environment: environment, Log: log},
		grantFile: filepath.Join(o.runDir, "pull-grant.json"), tab: tab, state: o.state}
	sup, err = lifecycle.New(lifecycle.Config{
		Table:      tab,
		Runtime:    rt,
		State:      o.state,
		RunDir:     o.runDir,
		Files:      files,
		ListenAddr: listenAddr,
		LogLevel:   o.logLevel,
		Dev:        o.dev,
		Settings: table.SettingsInput{Attestation: mode, ATLS: comps.atlsPlatform, Environment: environment, PullGrant: comps.currentGrant,
			LogQueueBytes: storage.budget.LogQueueBytes, AgentMinFreeBytes: storage.budget.AgentMinFreeBytes},
		Log:       log,
		Sandboxes: sandboxes,
		Measurer:  storage.measurer(measurer),
		Link: func(ctx context.Context) error {
			return manager.RunGuest(ctx, manager.Guest{
				Environment: environment,
				Supervisor:  comps,
				LogQueue:    sup.Dialer(tab.WithRole(table.RoleLogSink)),
				Evidence:    evidence(sup, measurements),
				Log:         log.With("part", "manager-link"),
				Events:      sup.Events(),
			})
		},
		TestMisbehave:  misbehave,
		PanicOnSIGUSR1: o.testPanic,
	})
	if err != nil {
		if sandboxes != nil {
			sandboxes.Close()
		}
		return err
	}
	comps.sup = sup
	defer comps.close()
	go comps.followGrant(ctx)
	storage.announce(ctx, sup.Events(), log)
	log.Info("supervisor started", "state", o.state, "listen", listenAddr, "table_hash", tab.HashHex(), "dev", o.dev)
	return sup.Run(ctx)
}

// wantsFD reports whether a child of t lists the extra fd name.
func wantsFD(t *table.Table, name string) bool {
	for _, c := range t.Children {
		if slices.Contains(c.Fds, name) {
			return true
		}
	}
	return false
}

// listenTCP makes ingress's listener and returns it as a file, with the
// address it got (a port 0 is chosen here).
func listenTCP(addr string) (*os.File, string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("supervisor: ingress listener: %w", err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, "", fmt.Errorf("supervisor: ingress listener: %w", err)
	}
	return f, l.Addr().String(), nil
}

// algoConfig is the algorithm sandboxes' configuration: the maximums of the
// --algo-* flags (the results cap following the storage), the state
// directories behind the logical sources, where results go, and proxy,
// which hands each sandbox's proxy listener to egress.
func (o *options) algoConfig(rt *sandbox.Runtime, storage stateStorage, proxy func(edge string, ln *os.File) error, log *slog.Logger) algosandbox.Config {
	max := o.algo
	max.ResultsBytes = storage.budget.ResultsBytes
	results, err := storage.results(o.state)
	if err != nil {
		// In memory, then, and capped as results in memory are.
		max.ResultsBytes = min(max.ResultsBytes, 512<<20)
		log.Error("results on the scratch disk unavailable; each run's results go to a tmpfs", "err", err, "cap_mib", max.ResultsBytes>>20)
	}
	return algosandbox.Config{
		Max:            max,
		Results:        results,
		Runtime:        rt,
		ComputationDir: filepath.Join(o.state, "computation"),
		WorkDir:        filepath.Join(o.state, "runner"),
		RunDir:         filepath.Join(o.runDir, "algorithms"),
		Proxy:          proxy,
		Log:            log,
	}
}

// evidence returns how the manager link gets evidence from the child
// holding the TPM: as a control command, which that child answers with
// EvidenceRequest. The report is bound to the client certificate, as
// Cocos's guest binds it (manager.Guest).
func evidence(sup *lifecycle.Supervisor, child string) func(context.Context, *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error) {
	return func(ctx context.Context, req *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error) {
		// The link may come up before the attestation child is ready.
		out, err := commandWhenUp(ctx, sup, child, req)
		if err != nil {
			return nil, err
		}
		r, ok := out.(*attestpb.EvidenceResponse)
		if !ok {
			return nil, fmt.Errorf("supervisor: %s answered %T, want EvidenceResponse", child, out)
		}
		return r, nil
	}
}

// commandWhenUp sends a command to child, retrying while the child is not
// running (it may be starting or between restarts) until ctx ends.
func commandWhenUp(ctx context.Context, sup *lifecycle.Supervisor, child string, body proto.Message) (proto.Message, error) {
	out, err := sup.Command(ctx, child, body)
	for (errors.Is(err, lifecycle.ErrNotRunning) || errors.Is(err, lifecycle.ErrChildGone)) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
			out, err = sup.Command(ctx, child, body)
		}
	}
	return out, err
}
