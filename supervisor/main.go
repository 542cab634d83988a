package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/algosandbox"
	"github.com/cvmd/cvmd/supervisor/lifecycle"
	"github.com/cvmd/cvmd/supervisor/pid1"
	"github.com/cvmd/cvmd/supervisor/table"
)

// options are the flags of `cvmd supervise`.
type options struct {
	state        string
	runDir       string
	dev          bool
	listen       string
	env          string
	logLevel     string
	print        bool
	cgroupRoot   string
	attestation  string
	proper       bool
	sealed       bool
	rooted       bool
	testPanic    bool
	readyTimeout time.Duration
	window       time.Duration
	standbyAfter *time.Duration // nil: the table's
	misbehave    string
	startTimeout time.Duration
	algo         algosandbox.Limits
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("cvmd supervise", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.state, "state", "", "state directory (default /var/lib/cvmd; required with --dev)")
	fs.StringVar(&o.runDir, "run-dir", "", "runtime directory (default /run/cvmd, or STATE/run with --dev)")
	fs.BoolVar(&o.dev, "dev", false, "development mode: become PID 1 of new PID and mount namespaces on this host; exit instead of powering off")
	fs.StringVar(&o.listen, "listen", "", "ingress TCP address (default :7002, or 127.0.0.1:7002 with --dev)")
	fs.StringVar(&o.env, "env", "", "Cocos environment file for the manager link (AGENT_CVM_GRPC_URL, ...)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level of the supervisor and the children: debug, info, warn, error")
	fs.BoolVar(&o.print, "print-sandbox", false, "print the child table (the measured sandbox policy) and its hash, then exit")
	fs.StringVar(&o.cgroupRoot, "cgroup-root", "", "relative cgroup path of the children (default cvmd, or cvmd-<hash of STATE> with --dev)")
	fs.StringVar(&o.attestation, "attestation", "", "attestation mode: "+table.AttestationModes+" (default: "+table.AttestationVar+" on the kernel command line or in the environment file, else auto; simulated with --dev)")
	// The most an algorithm sandbox may get (a request may ask for less).
	fs.Var(sizeFlag{&o.algo.MemoryBytes}, "algo-memory", "algorithm sandbox memory (and memory+swap) limit, bytes or with a suffix K, M, G, KiB, MiB, GiB (default 1GiB)")
	fs.Int64Var(&o.algo.Pids, "algo-pids", 0, "algorithm sandbox pids limit, threads count (default 256)")
	fs.Var(cpuFlag{&o.algo.CPUMillis}, "algo-cpu", "algorithm sandbox CPU limit in CPUs, e.g. 1.5 (default all CPUs)")
	fs.DurationVar(&o.algo.WallClock, "algo-timeout", 0, "algorithm wall-clock limit, e.g. 30m (default 1h)")
	fs.Var(sizeFlag{&o.algo.ResultsBytes}, "algo-results-cap", "algorithm results tmpfs size, counted against its memory too (default 512MiB)")
	fs.Var(sizeFlag{&o.algo.TmpBytes}, "algo-tmp", "algorithm private /tmp size (default 256MiB)")
	// Internal flags: how PID 1 starts the supervisor proper.
	fs.BoolVar(&o.proper, "proper", false, "internal: run the supervisor proper (started by PID 1)")
	fs.BoolVar(&o.sealed, "sealed", false, "internal: PID 1 already set up and re-executed from a sealed copy")
	fs.BoolVar(&o.rooted, "rooted", false, "internal: PID 1 already mounted, moved the root and loaded modules; it re-executed from the new root and only seals its binary")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 0, "how long a child has to say READY (default: the table's, 10s)")
	fs.DurationVar(&o.startTimeout, "start-timeout", 0, "how long a computation may take to start (every child READY, the agent accepting it) before the manager is told why it did not (default 3m)")
	fs.DurationVar(&o.window, "restart-window", 0, "the restart policy's window: more than 5 restarts within it mark a child failed (default: the table's, 10s)")
	fs.Func("standby-after", "how long a child must have been READY before its standby (its next incarnation, made ahead) is built; 0 builds none (default: the table's, 1s)", func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("want a duration ≥ 0, e.g. 1s or 0")
		}
		o.standbyAfter = &d
		return nil
	})
	testFlags(fs, o) // only in a test build
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.algo.Pids < 0 || o.algo.WallClock < 0 || o.startTimeout < 0 {
		return nil, errors.New("supervise: --algo-pids, --algo-timeout and --start-timeout must not be negative")
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("supervise: unexpected argument %q", fs.Arg(0))
	}
	if o.state == "" {
		if o.dev {
			return nil, errors.New("supervise: --dev needs --state DIR")
		}
		o.state = "/var/lib/cvmd"
	}
	abs, err := filepath.Abs(o.state)
	if err != nil {
		return nil, fmt.Errorf("supervise: --state: %w", err)
	}
	o.state = abs
	if o.runDir == "" {
		o.runDir = "/run/cvmd"
		if o.dev {
			o.runDir = filepath.Join(o.state, "run")
		}
	}
	if o.listen == "" {
		o.listen = ":7002"
		if o.dev {
			o.listen = "127.0.0.1:7002"
		}
	}
	if o.cgroupRoot == "" {
		o.cgroupRoot = "cvmd"
		if o.dev {
			h := sha256.Sum256([]byte(o.state))
			o.cgroupRoot = "cvmd-" + hex.EncodeToString(h[:6])
		}
	}
	if o.attestation != "" && !table.ValidAttestation(o.attestation) {
		return nil, fmt.Errorf("supervise: --attestation %q: want %s", o.attestation, table.AttestationModes)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("supervise: --log-level %q: %w", o.logLevel, err)
	}
	return o, nil
}

// table is the child table as these flags make it: the one that is
// printed, run and measured.
func (o *options) table() *table.Table {
	tab := table.Default()
	tab.Attestation = o.defaultAttestation()
	if o.attestation != "" {
		tab.Attestation = o.attestation
	}
	if o.readyTimeout > 0 {
		tab.ReadyTimeout = o.readyTimeout
	}
	if o.window > 0 {
		tab.Policy.Window = o.window
	}
	if o.standbyAfter != nil {
		tab.StandbyAfter = *o.standbyAfter
	}
	return tab
}

// Main is `cvmd supervise` (and what PID 1 runs with no arguments).
//
// Three processes share the work so that PID 1 cannot die:
//   - with --dev on an ordinary host, the command re-executes itself as
//     PID 1 of new PID and mount namespaces and waits for it (pid1.RunDev);
//   - PID 1 mounts, reaps orphans and handles shutdown signals; it runs
//     the supervisor proper as its child and restarts it if it dies
//     (pid1.Run);
//   - the supervisor proper (--proper) starts and supervises the children
//     (runProper).
func Main(args []string) error {
	o, err := parseFlags(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return err // parseFlags checked it
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	switch {
	case o.print:
		// The table as it would be measured, flags applied.
		return o.table().Print(os.Stdout)
	case o.proper:
		return runProper(o, log.With("proc", "supervisor"))
	case os.Getpid() == 1:
		return pid1.Run(pid1.Config{
			Args: args, Dev: o.dev, Sealed: o.sealed, Rooted: o.rooted,
			ProperGrace:   properGrace(o.table()),
			RemoveCgroups: func() error { return sandbox.RemoveCgroupTree(o.cgroupRoot) },
			Log:           log.With("proc", "pid1"),
		})
	case o.dev:
		return pid1.RunDev(args, log.With("proc", "dev"))
	default:
		return errors.New("supervise: not PID 1; use --dev --state DIR on a workstation")
	}
}

// properGrace is how long PID 1 gives the supervisor proper to stop its
// children: a shutdown stops the table's dependency levels one after the
// other, each child within its StopGrace or, SIGKILLed, within
// lifecycle.KillMargin more; then the proper releases what it holds
// (properReleaseGrace).
func properGrace(t *table.Table) time.Duration {
	return time.Duration(t.Depth())*(t.StopGrace+lifecycle.KillMargin) + properReleaseGrace
}

// properReleaseGrace bounds what the supervisor proper does after its last
// child stopped: the event sink's last flush, the algorithm sandboxes' and
// the runtime's clean-up.
const properReleaseGrace = 3 * time.Second
