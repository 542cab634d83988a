// Package algosandbox makes the algorithm sandboxes the runner asks for:
// it validates a control.SandboxRequest against the configured maximums,
// resolves its logical paths ("computation/...", "work/...", "cvmd")
// beneath the state directories without following symlinks, binds exactly
// what it checked, makes a network namespace whose only way out is a proxy
// listener handed to the egress child, starts the algorithm in a fresh
// libcontainer sandbox (sandbox.AlgorithmSpec) and, when it ends, copies its
// results out of a capped tmpfs and cleans everything up. Each request gets
// its own sandbox, destroyed when its process ends.
//
// It does not talk to the runner itself: the supervisor's lifecycle loop
// passes requests in and the returned fds back. algosandbox imports
// sandbox and proto; only the supervisor's composition (package
// supervisor) and tests import it.
package algosandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/sandbox"
)

// Limits are the most an algorithm sandbox may get; a request may ask
// for less, never more. The zero value of a field means the package default.
type Limits struct {
	MemoryBytes  int64         // default 1 GiB
	Pids         int64         // default 256 (threads count)
	CPUMillis    int64         // default all CPUs
	WallClock    time.Duration // default 1 h
	ResultsBytes int64         // default 512 MiB (a tmpfs: RAM, charged to the algorithm)
	TmpBytes     int64         // default 256 MiB
}

// Config configures the algorithm sandboxes the runner may ask for.
type Config struct {
	Runtime *sandbox.Runtime
	// ComputationDir and WorkDir are the host dirs behind the logical
	// sources "computation/..." and "work/..." (<state>/computation and
	// <state>/runner).
	ComputationDir string
	WorkDir        string
	// RunDir holds per-sandbox scratch (the results tmpfs mount points);
	// root-only, ideally on a tmpfs.
	RunDir string
	// Results, when set, makes each sandbox's results directory instead of
	// a tmpfs in RunDir: on the scratch disk, capped at limit bytes by a
	// project quota (pid1.ResultsArea.Make), so that results need not fit
	// in memory. It returns the directory and how to remove it.
	Results func(name string, id uint64, limit int64, uid, gid int) (dir string, remove func(), err error)
	// Cvmd is the binary behind the logical source "cvmd"; "" = os.Executable.
	Cvmd string
	// UID and GID the algorithm runs as; 0 means 65532 (never root).
	UID, GID int
	// BaseDirs of the host form the read-only base root; nil = DefaultBaseDirs.
	BaseDirs []string
	// Hide are host dirs covered by an empty dir in every sandbox; nil = DefaultHide.
	Hide []string
	// Max are the limits; zero fields are the defaults.
	Max Limits
	// ProxyPort is the proxy's port inside each sandbox; 0 = 3128.
	ProxyPort int
	// Proxy hands the proxy listener of sandbox id to the egress child (as a
	// Rewire of "proxy:<id>"); it takes ownership of ln. nil keeps the
	// listener unserved (connections to the proxy then hang): tests only.
	Proxy func(edge string, ln *os.File) error
	// Log receives one line per sandbox start and end; nil = discard.
	Log *slog.Logger
}

// DefaultBaseDirs are the host dirs an algorithm sees of the base image.
var DefaultBaseDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"}

// DefaultHide are covered in every algorithm sandbox: the platform's
// environment file (/etc/cocos), the manager link's certificates and mTLS
// client key (/etc/certs, Cocos's certs_share) and cvmd's configuration.
var DefaultHide = []string{"/etc/cocos", "/etc/certs", "/etc/cvmd"}

// Sandboxes serves the runner's SandboxRequest and SandboxKill. Each
// request gets a fresh sandbox, destroyed when its process ends. It is safe
// for concurrent use.
type Sandboxes struct {
	cfg Config
	log *slog.Logger
	wg  sync.WaitGroup

	cvmdOnce sync.Once
	cvmdCopy string // RunDir/cvmd once made
	cvmdErr  error

	mu     sync.Mutex
	seq    uint64              // guarded by mu
	live   map[uint64]*algoRun // guarded by mu; by request id
	closed bool                // guarded by mu
}

type algoRun struct {
	id  string
	seq uint64 // numbers its results dir's quota

	// mu is never held across the container's creation (kill waits for it).
	mu         sync.Mutex
	sb         *sandbox.Sandbox // guarded by mu; nil until started
	stopReason string           // guarded by mu
	timedOut   bool             // guarded by mu
}

// New checks cfg and makes RunDir (after removing what a previous
// supervisor left there).
func New(cfg Config) (*Sandboxes, error) {
	if cfg.Runtime == nil {
		return nil, errors.New("algosandbox: no sandbox runtime")
	}
	for name, d := range map[string]string{"computation dir": cfg.ComputationDir, "work dir": cfg.WorkDir, "run dir": cfg.RunDir} {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("algosandbox: %s %q: want an absolute path", name, d)
		}
	}
	if cfg.Cvmd == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("algosandbox: own executable: %w", err)
		}
		cfg.Cvmd = exe
	}
	if cfg.UID == 0 {
		cfg.UID = 65532
	}
	if cfg.GID == 0 {
		cfg.GID = 65532
	}
	if cfg.BaseDirs == nil {
		cfg.BaseDirs = DefaultBaseDirs
	}
	if cfg.Hide == nil {
		cfg.Hide = DefaultHide
	}
	m := &cfg.Max
	m.MemoryBytes = orDefault(m.MemoryBytes, 1<<30)
	m.Pids = orDefault(m.Pids, 256)
	m.CPUMillis = orDefault(m.CPUMillis, int64(runtime.NumCPU())*1000)
	m.WallClock = orDefault(m.WallClock, time.Hour)
	m.ResultsBytes = orDefault(m.ResultsBytes, 512<<20)
	m.TmpBytes = orDefault(m.TmpBytes, 256<<20)
	if cfg.ProxyPort == 0 {
		cfg.ProxyPort = 3128
	}
	// What a previous supervisor left (its results tmpfs and binds) goes first.
	if err := cleanRunDir(cfg.RunDir); err != nil {
		return nil, fmt.Errorf("algosandbox: cleaning run dir: %w", err)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("algosandbox: run dir: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sandboxes{cfg: cfg, log: log, live: map[uint64]*algoRun{}}, nil
}

// cvmd returns a copy of the cvmd binary in RunDir, made on first use. The
// supervisor may run from a sealed memfd, which cannot be bind-mounted (it
// is in no mount namespace of ours); a root-only regular copy can.
func (a *Sandboxes) cvmd() (string, error) {
	a.cvmdOnce.Do(func() {
		dst := filepath.Join(a.cfg.RunDir, "cvmd")
		tmp := dst + ".tmp"
		in, err := os.Open(a.cfg.Cvmd)
		if err != nil {
			a.cvmdErr = fmt.Errorf("opening cvmd for wasm: %w", err)
			return
		}
		defer in.Close()
		os.Remove(tmp)
		out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o555)
		if err == nil {
			_, err = io.Copy(out, in)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
		}
		if err == nil {
			err = os.Rename(tmp, dst)
		}
		if err != nil {
			a.cvmdErr = fmt.Errorf("copying cvmd for wasm: %w", err)
			return
		}
		a.cvmdCopy = dst
	})
	return a.cvmdCopy, a.cvmdErr
}

func orDefault[T int64 | time.Duration](v, d T) T {
	if v == 0 {
		return d
	}
	return v
}

// Request validates req, makes the sandbox and starts it. It returns the
// fds for the runner ("stdout", "stderr", "status"), which the caller sends
// and closes, and the sandbox's name (its sandbox id, and the
// "proxy:<name>" edge of its egress proxy). The sandbox is waited for, its
// results copied out and everything cleaned up in a goroutine of a's; the
// SandboxExit is written on "status" at the end.
//
// ctx bounds the request, not the sandbox: when it ends before Request
// returned (the runner exited, or gave up), the sandbox being made is
// killed and cleaned up, and Request returns ctx's error. Once Request
// returned, Kill and KillAll end the sandbox.
func (a *Sandboxes) Request(ctx context.Context, req *control.SandboxRequest) (map[string]*os.File, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("algosandbox: request %d: %w", req.GetId(), err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, "", errors.New("algosandbox: stopping")
	}
	if _, dup := a.live[req.GetId()]; dup {
		a.mu.Unlock()
		return nil, "", fmt.Errorf("algosandbox: request id %d already running", req.GetId())
	}
	a.seq++
	run := &algoRun{id: fmt.Sprintf("algo-%d-%d", os.Getpid(), a.seq), seq: a.seq}
	a.live[req.GetId()] = run
	a.wg.Add(1)
	a.mu.Unlock()
	forget := func() {
		a.mu.Lock()
		delete(a.live, req.GetId())
		a.mu.Unlock()
		a.wg.Done()
	}
	cancelRequest := context.AfterFunc(ctx, func() { run.kill("its request was cancelled") })
	status, files, done, err := a.start(req, run)
	if !cancelRequest() && err == nil {
		// Started, but the request ended meanwhile: a.kill killed it (or
		// will, once it sees run.sb); nobody reads it. Clean up here.
		for _, f := range files {
			f.Close()
		}
		done()
		status.Close()
		forget()
		err = fmt.Errorf("algosandbox: request %d: %w", req.GetId(), ctx.Err())
		a.log.Warn("algorithm sandbox request cancelled", "request", req.GetId(), "computation_id", req.GetComputationId(), "err", err)
		return nil, "", err
	}
	if err != nil {
		forget()
		a.log.Warn("algorithm sandbox refused", "request", req.GetId(), "computation_id", req.GetComputationId(), "err", err)
		return nil, "", err
	}
	go func() { // a.wg counts it (forget)
		st := done()
		// Destroyed and cleaned up: no longer live by the time the runner
		// hears of the end (a runner's Stop that returned finds nothing left).
		forget()
		a.log.Info("algorithm sandbox ended", "sandbox", run.id, "computation_id", req.GetComputationId(),
			"exit_code", st.GetExitCode(), "signal", st.GetSignal(), "oom", st.GetOomKilled(), "timed_out", st.GetTimedOut(),
			"stopped", st.GetStopReason(), "error", st.GetError())
		// The runner learns the end only from this write: say so if it fails.
		b, err := proto.Marshal(st)
		if err == nil {
			_, err = status.Write(b)
		}
		if cerr := status.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			a.log.Error("algorithm sandbox end not reported to the runner", "sandbox", run.id, "err", err)
		}
	}()
	return files, run.id, nil
}

// Kill kills the sandbox of request id (the runner's SandboxKill).
func (a *Sandboxes) Kill(id uint64) { a.kill(id, "stopped by the runner") }

// KillAll kills every sandbox: the runner exited, so nobody reads them.
func (a *Sandboxes) KillAll() { a.killAll("runner exited") }

func (a *Sandboxes) killAll(reason string) {
	a.mu.Lock()
	ids := make([]uint64, 0, len(a.live))
	for id := range a.live {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	for _, id := range ids {
		a.kill(id, reason)
	}
}

// Close kills every sandbox, refuses new requests and waits until every
// sandbox is destroyed and cleaned up. It is idempotent.
func (a *Sandboxes) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.killAll("supervisor stopping")
	a.wg.Wait()
	return nil
}

// Max returns the limits in force: the configured ones, defaults filled in.
func (a *Sandboxes) Max() Limits { return a.cfg.Max }

// Live returns how many sandboxes are running.
func (a *Sandboxes) Live() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.live)
}

func (a *Sandboxes) kill(id uint64, reason string) {
	a.mu.Lock()
	r := a.live[id]
	a.mu.Unlock()
	if r != nil {
		r.kill(reason)
	}
}

// kill ends the run: its sandbox at once if it exists, else as soon as it
// does (start looks), or it is never started.
func (r *algoRun) kill(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopReason == "" {
		r.stopReason = reason
	}
	if r.sb != nil {
		r.sb.Kill()
	}
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// proxyVars are set by the supervisor alone.
var proxyVars = map[string]bool{"HTTP_PROXY": true, "HTTPS_PROXY": true, "NO_PROXY": true, "ALL_PROXY": true}

// algoPlan is a validated request with its host-side resources.
type algoPlan struct {
	spec    *sandbox.Algorithm
	opened  []*os.File // O_PATH fds behind the binds; closed once started
	owned   []ownedDir // writable work dirs lent to the algorithm's uid
	results string     // host results dir (computation/...), "" = none
	wall    time.Duration
	// resultsBytes caps the results tmpfs.
	resultsBytes int64
}

type ownedDir struct {
	path     string
	uid, gid int
}

// validate checks req against the configured maximums and resolves its
// logical paths. The error names the field and value.
func (a *Sandboxes) validate(req *control.SandboxRequest, id string) (*algoPlan, error) {
	p := &algoPlan{}
	fail := func(err error) (*algoPlan, error) {
		for _, f := range p.opened {
			f.Close()
		}
		return nil, err
	}
	if n := len(req.GetArgs()); n == 0 || n > 4096 || req.GetArgs()[0] == "" {
		return fail(fmt.Errorf("args: want 1..4096 entries with a non-empty args[0], got %d", n))
	}
	for i, s := range req.GetArgs() {
		if len(s) > 128<<10 || strings.IndexByte(s, 0) >= 0 {
			return fail(fmt.Errorf("args[%d]: longer than 128 KiB or has a NUL", i))
		}
	}
	if len(req.GetEnv()) > 256 {
		return fail(fmt.Errorf("env: %d entries, at most 256", len(req.GetEnv())))
	}
	proxy := fmt.Sprintf("http://127.0.0.1:%d", a.cfg.ProxyPort)
	env := []string{"HTTP_PROXY=" + proxy, "HTTPS_PROXY=" + proxy, "http_proxy=" + proxy, "https_proxy=" + proxy,
		"NO_PROXY=localhost,127.0.0.1,::1", "no_proxy=localhost,127.0.0.1,::1"}
	for i, kv := range req.GetEnv() {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envNameRE.MatchString(k) || len(kv) > 32<<10 || strings.IndexByte(kv, 0) >= 0 {
			return fail(fmt.Errorf("env[%d] %.64q: want NAME=value, at most 32 KiB", i, kv))
		}
		if proxyVars[strings.ToUpper(k)] {
			return fail(fmt.Errorf("env[%d]: %s is set by the supervisor", i, k))
		}
		env = append(env, kv)
	}
	if c := req.GetCwd(); c != "" && (!path.IsAbs(c) || path.Clean(c) != c) {
		return fail(fmt.Errorf("cwd %q: want a clean absolute path", c))
	}
	l := req.GetLimits()
	limits := []struct {
		name     string
		got, max int64
	}{
		{"memory_bytes", int64(l.GetMemoryBytes()), a.cfg.Max.MemoryBytes},
		{"pids", int64(l.GetPids()), a.cfg.Max.Pids},
		{"cpu_millis", int64(l.GetCpuMillis()), a.cfg.Max.CPUMillis},
		{"wall_clock_ms", int64(l.GetWallClockMs()), a.cfg.Max.WallClock.Milliseconds()},
		{"results_bytes", int64(l.GetResultsBytes()), a.cfg.Max.ResultsBytes},
		{"tmp_bytes", int64(l.GetTmpBytes()), a.cfg.Max.TmpBytes},
	}
	got := make([]int64, len(limits))
	for i, lim := range limits {
		if lim.got < 0 || lim.got > lim.max {
			return fail(fmt.Errorf("limits.%s %d: exceeds the maximum %d", lim.name, uint64(lim.got), lim.max))
		}
		got[i] = lim.got
		if got[i] == 0 {
			got[i] = lim.max
		}
	}
	p.wall = time.Duration(got[3]) * time.Millisecond
	p.resultsBytes = got[4]
	spec := &sandbox.Algorithm{
		ID: id, Args: req.GetArgs(), Env: env, Cwd: req.GetCwd(), UID: a.cfg.UID, GID: a.cfg.GID,
		MemoryBytes: got[0], Pids: got[1], CPUMillis: got[2], TmpBytes: got[5],
	}
	if r := req.GetRootfs(); r != "" {
		kind, _, err := logicalPath(r)
		if err != nil || kind != srcWork {
			return fail(fmt.Errorf("rootfs %q: want work/<path>", r))
		}
		host, err := a.resolveDir(r)
		if err != nil {
			return fail(fmt.Errorf("rootfs: %w", err))
		}
		spec.Rootfs = host
	} else {
		for _, d := range a.cfg.BaseDirs {
			if _, err := os.Stat(d); err == nil {
				spec.BaseDirs = append(spec.BaseDirs, d)
			}
		}
		for _, h := range a.cfg.Hide {
			if fi, err := os.Stat(h); err == nil && fi.IsDir() {
				spec.Hide = append(spec.Hide, h)
			}
		}
	}
	dests := map[string]bool{}
	for i, m := range req.GetMounts() {
		d := m.GetDestination()
		if !path.IsAbs(d) || path.Clean(d) != d || !(strings.HasPrefix(d, "/cocos/") || strings.HasPrefix(d, "/opt/")) {
			return fail(fmt.Errorf("mounts[%d].destination %q: want a clean path under /cocos/ or /opt/", i, d))
		}
		if dests[d] {
			return fail(fmt.Errorf("mounts[%d].destination %q: mounted twice", i, d))
		}
		dests[d] = true
		kind, rel, err := logicalPath(m.GetSource())
		if err != nil {
			return fail(fmt.Errorf("mounts[%d].source: %w", i, err))
		}
		if m.GetWritable() && kind != srcWork {
			return fail(fmt.Errorf("mounts[%d] %q: only work/ sources may be writable", i, m.GetSource()))
		}
		var f *os.File
		switch kind {
		case srcCvmd:
			var exe string
			if exe, err = a.cvmd(); err == nil {
				f, err = os.OpenFile(exe, unix.O_PATH|unix.O_CLOEXEC, 0)
			}
		case srcComputation:
			f, err = openBeneath(a.cfg.ComputationDir, rel)
		case srcWork:
			f, err = openBeneath(a.cfg.WorkDir, rel)
		}
		if err != nil {
			return fail(fmt.Errorf("mounts[%d] %q: %w", i, m.GetSource(), err))
		}
		p.opened = append(p.opened, f)
		if m.GetWritable() {
			fi, err := f.Stat()
			if err != nil || !fi.IsDir() {
				return fail(fmt.Errorf("mounts[%d] %q: a writable mount must be a directory", i, m.GetSource()))
			}
			uid, gid := ownerOf(fi)
			p.owned = append(p.owned, ownedDir{path: procFDPath(f), uid: uid, gid: gid})
		}
		// The agent's files (datasets) are data: never executable. What the
		// runner prepared (the algorithm's copy, a venv, cvmd) is.
		spec.Mounts = append(spec.Mounts, sandbox.AlgorithmMount{Source: procFDPath(f), Dest: d, Writable: m.GetWritable(), Exec: kind != srcComputation})
	}
	if r := req.GetResults(); r != "" {
		kind, _, err := logicalPath(r)
		if err != nil || kind != srcComputation {
			return fail(fmt.Errorf("results %q: want computation/<path>", r))
		}
		host, err := a.resolveDir(r)
		if err != nil {
			return fail(fmt.Errorf("results: %w", err))
		}
		p.results = host
		spec.ResultsDest = req.GetResultsDestination()
		if spec.ResultsDest == "" {
			spec.ResultsDest = "/cocos/results"
		}
		if d := spec.ResultsDest; !path.IsAbs(d) || path.Clean(d) != d || !strings.HasPrefix(d, "/cocos/") || dests[d] {
			return fail(fmt.Errorf("results_destination %q: want a clean path under /cocos/, not used by a mount", d))
		}
	}
	p.spec = spec
	return p, nil
}

// resolveDir returns the host path of a logical directory after checking it
// has no symlink on the way. (A rootfs and the results dir are used by path:
// libcontainer needs a path for the root; the results are written through
// os.Root.)
func (a *Sandboxes) resolveDir(logical string) (string, error) {
	kind, rel, err := logicalPath(logical)
	if err != nil {
		return "", err
	}
	base := a.cfg.WorkDir
	if kind == srcComputation {
		base = a.cfg.ComputationDir
	}
	f, err := openBeneath(base, rel)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%q: not a directory", logical)
	}
	return filepath.Join(base, rel), nil
}

// start makes the sandbox's resources and starts it. It returns the write
// end of the status pipe, the fds for the runner, and done, which waits for
// the end, cleans everything up and says how it ended.
func (a *Sandboxes) start(req *control.SandboxRequest, run *algoRun) (status *os.File, files map[string]*os.File, done func() *control.SandboxExit, err error) {
	t0 := time.Now()
	plan, err := a.validate(req, run.id)
	if err != nil {
		return nil, nil, nil, err
	}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	closeOpened := func() {
		for _, f := range plan.opened {
			f.Close()
		}
		plan.opened = nil
	}
	defer func() {
		closeOpened()
		if err != nil {
			cleanup()
		}
	}()
	dir := filepath.Join(a.cfg.RunDir, run.id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, nil, err
	}
	cleanups = append(cleanups, func() { a.warn(run.id, "removing its scratch dir", os.RemoveAll(dir)) })
	resultsTmp := ""
	if plan.results != "" {
		if a.cfg.Results != nil {
			d, remove, err := a.cfg.Results(run.id, run.seq, plan.resultsBytes, a.cfg.UID, a.cfg.GID)
			if err != nil {
				return nil, nil, nil, err
			}
			resultsTmp = d
			cleanups = append(cleanups, remove)
		} else {
			resultsTmp = filepath.Join(dir, "results")
			if err := mountResults(resultsTmp, plan.resultsBytes, a.cfg.UID, a.cfg.GID); err != nil {
				return nil, nil, nil, err
			}
			cleanups = append(cleanups, func() {
				a.warn(run.id, "unmounting its results tmpfs", syscall.Unmount(resultsTmp, syscall.MNT_DETACH))
			})
		}
		plan.spec.Results = resultsTmp
	}
	net, err := newAlgoNet(a.cfg.ProxyPort)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("network namespace: %w", err)
	}
	defer net.Close()
	plan.spec.Net = procFDPath(net.ns)
	// The supervisor keeps its own reference to the listening socket: when
	// the sandbox ends, shutdown(2) on it stops listening for every holder,
	// so egress's accept fails and it lets go of its copy too (the socket
	// is one object, shared by fd passing).
	ln := net.listener
	net.listener = nil
	cleanups = append(cleanups, func() {
		unix.Shutdown(int(ln.Fd()), unix.SHUT_RDWR)
		ln.Close()
	})
	if a.cfg.Proxy != nil {
		give, err := dupFile(ln)
		if err != nil {
			return nil, nil, nil, err
		}
		if err := a.cfg.Proxy("proxy:"+run.id, give); err != nil {
			return nil, nil, nil, fmt.Errorf("handing the proxy listener to egress: %w", err)
		}
	}
	// A writable work dir is lent to the algorithm's uid for the sandbox's
	// life (everything in it: a venv made by one sandbox is filled by the
	// next) and given back to its owner afterwards.
	for _, o := range plan.owned {
		if err := chownTree(o.path, a.cfg.UID, a.cfg.GID); err != nil {
			return nil, nil, nil, fmt.Errorf("lending a writable dir: %w", err)
		}
	}
	// The owned dirs are given back through the opened fds: reopen them by
	// path now, since plan.opened is closed once the sandbox started.
	var giveBack []func()
	for _, o := range plan.owned {
		d, err := os.Open(o.path)
		if err != nil {
			return nil, nil, nil, err
		}
		o := o
		giveBack = append(giveBack, func() {
			if err := chownTree(procFDPath(d), o.uid, o.gid); err != nil {
				a.log.Warn("giving a writable dir back", "sandbox", run.id, "err", err)
			}
			d.Close()
		})
	}
	cleanups = append(cleanups, func() {
		for _, g := range giveBack {
			g()
		}
	})
	// Bind every opened source onto a mount point of ours first: a bind's
	// source must be in the mounting process's namespace, and the sandbox
	// copies ours; the opened fd pins exactly what was checked.
	for i := range plan.spec.Mounts {
		m := &plan.spec.Mounts[i]
		target, err := bindOpened(filepath.Join(dir, "mnt"), i, m.Source)
		if err != nil {
			return nil, nil, nil, err
		}
		cleanups = append(cleanups, func() { a.warn(run.id, "unmounting a bind", unix.Unmount(target, unix.MNT_DETACH)) })
		m.Source = target
	}
	spec, err := sandbox.AlgorithmSpec(plan.spec)
	if err != nil {
		return nil, nil, nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, nil, err
	}
	stR, stW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, nil, nil, err
	}
	closePipes := func() {
		for _, f := range []*os.File{outR, outW, errR, errW, stR, stW} {
			f.Close()
		}
	}
	run.mu.Lock()
	if run.stopReason != "" {
		reason := run.stopReason
		run.mu.Unlock()
		closePipes()
		return nil, nil, nil, fmt.Errorf("stopped before start: %s", reason)
	}
	run.mu.Unlock()
	// Not under run.mu: a Kill during the container's creation must not
	// wait for it. It marks the run; the sandbox is killed once it exists.
	t1 := time.Now()
	sb, err := a.cfg.Runtime.Start(spec, sandbox.IO{Stdout: outW, Stderr: errW})
	if err == nil {
		run.mu.Lock()
		run.sb = sb
		if run.stopReason != "" {
			sb.Kill() // done reports it stopped
		}
		run.mu.Unlock()
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		stR.Close()
		stW.Close()
		return nil, nil, nil, err
	}
	closeOpened()
	a.log.Info("algorithm sandbox started", "sandbox", run.id, "computation_id", req.GetComputationId(), "pid", sb.Pid(),
		"prepare_ms", t1.Sub(t0).Milliseconds(), "start_ms", time.Since(t1).Milliseconds())
	timer := time.AfterFunc(plan.wall, func() {
		run.mu.Lock()
		run.timedOut = true
		run.mu.Unlock()
		sb.Kill()
	})
	done = func() *control.SandboxExit {
		ps, werr := sb.Wait()
		timer.Stop()
		exit := &control.SandboxExit{ExitCode: -1, Complete: true, MemoryLimitBytes: uint64(plan.spec.MemoryBytes),
			ResultsLimitBytes: uint64(plan.resultsBytes), WallClockLimitMs: uint64(plan.wall.Milliseconds())}
		exit.OomKilled = sb.OOMKilled()
		a.warn(run.id, "destroying its sandbox", sb.Destroy())
		if werr != nil && ps == nil {
			exit.Error = "waiting for the algorithm: " + werr.Error()
		} else if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				exit.ExitCode = int32(ws.ExitStatus())
			case ws.Signaled():
				exit.Signal = unixSignalName(ws.Signal())
			}
		}
		run.mu.Lock()
		exit.TimedOut = run.timedOut
		if run.stopReason != "" && !run.timedOut {
			exit.Stopped, exit.StopReason = true, run.stopReason
		}
		run.mu.Unlock()
		if resultsTmp != "" {
			used, full, err := resultsUsage(resultsTmp)
			exit.ResultsBytes = used
			switch {
			case err != nil:
				exit.Error = "measuring results: " + err.Error()
			case full:
				exit.ResultsOverQuota = true
			case exit.ExitCode == 0:
				var over *resultsOverCap
				if skipped, err := copyResults(resultsTmp, plan.results, plan.resultsBytes); errors.As(err, &over) {
					exit.ResultsOverQuota, exit.ResultsBytes = true, uint64(over.bytes)
				} else if err != nil {
					exit.Error = "copying results: " + err.Error()
				} else if skipped > 0 {
					a.log.Warn("results: skipped entries that are not regular files or dirs", "sandbox", run.id, "skipped", skipped)
				}
			}
		}
		cleanup()
		return exit
	}
	return stW, map[string]*os.File{"stdout": outR, "stderr": errR, "status": stR}, done, nil
}

// warn logs a clean-up step of sandbox id that failed (what it leaves
// behind, the next supervisor's cleanRunDir removes).
func (a *Sandboxes) warn(id, what string, err error) {
	if err != nil {
		a.log.Warn("algorithm sandbox clean-up: "+what, "sandbox", id, "err", err)
	}
}

func unixSignalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "killed"
	case syscall.SIGSEGV:
		return "segmentation fault"
	case syscall.SIGABRT:
		return "aborted"
	case syscall.SIGTERM:
		return "terminated"
	}
	return s.String()
}
