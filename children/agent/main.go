package agent

import (
	"context"
	"errors"
	"runtime/debug"
	"time"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/runner"
)

// Main runs the agent child: the public API on every "from:*" edge except
// the supervisor's, which alone gets agentctl.Control.
func Main(ctx context.Context, env *child.Env) error {
	settings := &config.AgentSettings{}
	if err := env.Settings(settings); err != nil {
		return err
	}
	// Uploads stream ~1 MiB chunks through the heap; a soft limit makes the
	// collector reclaim them before the process grows (RSS target 64 MiB).
	debug.SetMemoryLimit(int64(orDefault(settings.GetMemoryLimitBytes(), 32<<20)))
	if env.Config.GetStateDir() == "" {
		return errors.New("agent: the config has no state_dir")
	}
	cfg := Config{StateDir: env.Config.GetStateDir(), Settings: settings, Events: env.Events(), Log: env.Log}
	if s := env.LogSink(); s != nil {
		cfg.SetComputationID = s.SetComputationID
	}
	if d, err := env.Dialer("runner"); err == nil {
		conn, err := ipc.GRPCClient(d)
		if err != nil {
			return err
		}
		defer conn.Close()
		cfg.Runner = runner.NewRunnerClient(conn)
	} else {
		env.Log.Warn("no runner: computations will fail", "err", err)
	}
	if d, err := env.Dialer("attestation"); err == nil {
		conn, err := ipc.GRPCClient(d)
		if err != nil {
			return err
		}
		defer conn.Close()
		cfg.Attestation = attestation.NewAttestationClient(conn)
	} else {
		env.Log.Warn("no attestation service", "err", err)
	}
	if d, err := env.Dialer("egress"); err == nil {
		if cfg.Pull, err = PullConfig(settings.GetPull(), d, cfg.Attestation); err != nil {
			return err
		}
		cfg.MAA = MAAClient(settings.GetMaaUrl(), cfg.Pull)
	} else {
		env.Log.Warn("no egress: manifests with remote sources will be refused", "err", err)
	}
	// Take the supervisor's edge before Listener claims every "from:" fd: the
	// control API must not be reachable through the ingress.
	var ctl *ipc.Listener
	if f, err := env.File("from:supervisor"); err == nil {
		ctl = ipc.NewListener("agent-control")
		ctl.Add(f)
		defer ctl.Close()
	} else {
		env.Log.Warn("no supervisor edge: agentctl.Control is not served", "err", err)
	}
	a, err := New(cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		a.Close(cctx)
	}()
	ln := env.Listener()
	defer ln.Close()
	if err := env.Ready(); err != nil {
		return err
	}
	if ctl == nil {
		return a.Run(ctx, ln, nil)
	}
	return a.Run(ctx, ln, ctl)
}
