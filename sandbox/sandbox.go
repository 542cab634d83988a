package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	_ "github.com/opencontainers/cgroups/devices" // device rules in cgroups (without it they cannot be applied)
	devconfig "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// Init is libcontainer's re-exec entry (`<exe> init`); it never returns.
// Call it from func init() of the main package when os.Args[1] == "init".
func Init() { libcontainer.Init() }

// RuntimeConfig says where a Runtime keeps its state.
type RuntimeConfig struct {
	// StateDir holds libcontainer's per-container state (must be private to
	// this Runtime; a tmpfs is best). Created if missing.
	StateDir string
	// CgroupRoot is the relative cgroup path under which every sandbox's
	// cgroup is made (nested under the caller's own cgroup in each
	// hierarchy), e.g. "cvmd". Required: it is what NewRuntime cleans.
	CgroupRoot string
}

// Runtime starts sandboxes. It is safe for concurrent use.
type Runtime struct {
	cfg      RuntimeConfig
	skeleton string

	mu   sync.Mutex
	live map[string]*Sandbox // guarded by mu

	// forks runs every container start on one of a few goroutines locked to
	// their OS threads for the Runtime's life. Sandboxes get Pdeathsig=SIGKILL, which
	// the kernel sends when the *thread* that forked them exits, and
	// libcontainer itself runs a goroutine per start on a locked thread that
	// it lets die: a start made on such a thread earlier would have its
	// sandbox killed at random. Funnelling starts through long-lived
	// threads makes Pdeathsig mean "when this Runtime's process dies".
	forks    chan func()
	quit     chan struct{} // closed by Close
	forkDone chan struct{} // closed when the forker goroutines ended
	forkWG   sync.WaitGroup
	quitOnce sync.Once
}

// NewRuntime prepares StateDir and an empty skeleton rootfs, and removes
// whatever a previous Runtime with the same StateDir and CgroupRoot left
// behind (a crashed supervisor): its containers are killed, its state and
// cgroups removed.
func NewRuntime(cfg RuntimeConfig) (*Runtime, error) {
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("sandbox: state dir %q: want an absolute path", cfg.StateDir)
	}
	if cfg.CgroupRoot == "" || filepath.IsAbs(cfg.CgroupRoot) || filepath.Clean(cfg.CgroupRoot) != cfg.CgroupRoot {
		return nil, fmt.Errorf("sandbox: cgroup root %q: want a clean relative path", cfg.CgroupRoot)
	}
	r := &Runtime{cfg: cfg, live: map[string]*Sandbox{}, forks: make(chan func()), quit: make(chan struct{}), forkDone: make(chan struct{})}
	if err := r.cleanStale(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "containers"), 0o700); err != nil {
		return nil, fmt.Errorf("sandbox: making state dir: %w", err)
	}
	r.skeleton = filepath.Join(cfg.StateDir, "skeleton")
	if err := mountSkeleton(r.skeleton); err != nil {
		return nil, err
	}
	// Last: nothing after this can fail, so a refused Runtime leaves no
	// forker (and no locked thread) behind.
	r.forkWG.Add(forkers)
	for i := 0; i < forkers; i++ {
		go r.forker()
	}
	go func() { r.forkWG.Wait(); close(r.forkDone) }()
	return r, nil
}

// mountSkeleton makes dir the empty rootfs of sandboxes without their own:
// a small tmpfs of its own, so that a sandbox's /proc/self/mountinfo shows
// its root as "/" of "cvmd-skeleton", not as the host path of the state
// dir. A skeleton a crashed predecessor left mounted is replaced. Where
// mounting is not permitted (an unprivileged caller, which cannot start
// sandboxes anyway) it stays a plain directory.
func mountSkeleton(dir string) error {
	unix.Unmount(dir, unix.MNT_DETACH) // a predecessor's; EINVAL when none
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("sandbox: making skeleton rootfs: %w", err)
	}
	// Only the mount points libcontainer makes live in it: directories.
	err := unix.Mount("cvmd-skeleton", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m,nr_inodes=4096,mode=0755")
	if err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("sandbox: mounting the skeleton rootfs on %s: %w", dir, err)
	}
	return nil
}

// forkers is how many starts may run at once (each on its own thread).
const forkers = 3

func (r *Runtime) forker() {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine, after Close
	defer r.forkWG.Done()
	for {
		select {
		case f := <-r.forks:
			f()
		case <-r.quit:
			return
		}
	}
}

// onForker runs f on the forker thread and waits for it.
func (r *Runtime) onForker(f func() error) error {
	var err error
	done := make(chan struct{})
	select {
	case r.forks <- func() { err = f(); close(done) }:
	case <-r.forkDone:
		return errors.New("sandbox: runtime closed")
	}
	<-done
	return err
}

// cleanStale kills and removes what a previous Runtime left.
func (r *Runtime) cleanStale() error {
	dir := filepath.Join(r.cfg.StateDir, "containers")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if c, err := libcontainer.Load(dir, e.Name()); err == nil {
			c.Signal(unix.SIGKILL)
			c.Destroy()
		}
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
	return removeCgroupTree(r.cfg.CgroupRoot)
}

// Skeleton returns the empty rootfs used when Spec.Rootfs is "".
func (r *Runtime) Skeleton() string { return r.skeleton }

// IO is what a sandbox's process is connected to.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// ExtraFiles become fds 3, 4, ... in the sandbox. Start does not take
	// ownership: close your copies once Start returned.
	ExtraFiles []*os.File
}

// Sandbox is one running container.
type Sandbox struct {
	rt   *Runtime
	c    *libcontainer.Container
	p    *libcontainer.Process
	pid  int
	once sync.Once
	derr error

	// The process is waited for once; every Wait gets that one result.
	waitOnce  sync.Once
	waitState *os.ProcessState
	waitErr   error
}

// Start creates the container described by spec and runs its process. On
// error nothing is left behind.
func (r *Runtime) Start(spec *Spec, stdio IO) (*Sandbox, error) { return r.create(spec, stdio, true) }

// Create builds the container described by spec and starts its init, which
// stops just before it would execute spec.Args: the namespaces, mounts,
// cgroup limits and capability drop are in place; the seccomp filter is
// loaded and the program executed only by Exec. Building sandboxes ahead
// of time, in parallel, and running each when its turn comes is what makes
// a boot fast. On error nothing is left behind.
func (r *Runtime) Create(spec *Spec, stdio IO) (*Sandbox, error) { return r.create(spec, stdio, false) }

// Exec runs the program of a sandbox made by Create. If it fails, the
// sandbox's init is dead or dying: Wait and Destroy it as usual.
func (s *Sandbox) Exec() error {
	if err := s.c.Exec(); err != nil {
		return fmt.Errorf("sandbox: %s: exec: %w", s.c.ID(), err)
	}
	return nil
}

func (r *Runtime) create(spec *Spec, stdio IO, run bool) (*Sandbox, error) {
	cfg, err := spec.Config(ConfigOptions{Skeleton: r.skeleton, CgroupRoot: r.cfg.CgroupRoot})
	if err != nil {
		return nil, err
	}
	for _, path := range spec.Devices {
		d, err := deviceFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("sandbox: %s: device %s: %w", spec.ID, path, err)
		}
		cfg.Devices = append(cfg.Devices, d)
		cfg.Cgroups.Resources.Devices = append(cfg.Cgroups.Resources.Devices, &d.Rule)
	}
	r.mu.Lock()
	if _, dup := r.live[spec.ID]; dup {
		r.mu.Unlock()
		return nil, fmt.Errorf("sandbox: %s: already running", spec.ID)
	}
	r.live[spec.ID] = nil // reserve
	r.mu.Unlock()
	release := func() {
		r.mu.Lock()
		delete(r.live, spec.ID)
		r.mu.Unlock()
	}
	dir := filepath.Join(r.cfg.StateDir, "containers")
	c, err := libcontainer.Create(dir, spec.ID, cfg)
	if err != nil {
		// A leftover of ours with that name (its Sandbox was never destroyed).
		os.RemoveAll(filepath.Join(dir, spec.ID))
		if c, err = libcontainer.Create(dir, spec.ID, cfg); err != nil {
			release()
			return nil, fmt.Errorf("sandbox: creating %s: %w", spec.ID, err)
		}
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	p := &libcontainer.Process{
		Args:       spec.Args,
		Env:        spec.Env,
		Cwd:        cwd,
		UID:        spec.UID,
		GID:        spec.GID,
		Stdin:      stdio.Stdin,
		Stdout:     stdio.Stdout,
		Stderr:     stdio.Stderr,
		ExtraFiles: stdio.ExtraFiles,
		Init:       true,
	}
	start := c.Start
	if run {
		start = c.Run
	}
	if err := r.onForker(func() error { return start(p) }); err != nil {
		c.Destroy()
		release()
		return nil, fmt.Errorf("sandbox: running %s: %w", spec.ID, err)
	}
	pid, _ := p.Pid()
	sb := &Sandbox{rt: r, c: c, p: p, pid: pid}
	r.mu.Lock()
	r.live[spec.ID] = sb
	r.mu.Unlock()
	return sb, nil
}

// ID returns the container id.
func (s *Sandbox) ID() string { return s.c.ID() }

// Pid returns the host pid of the sandbox's process.
func (s *Sandbox) Pid() int { return s.pid }

// Wait waits for the sandbox's process to exit. The other processes of the
// sandbox die with it (it is PID 1 of its PID namespace).
// A non-zero exit or a signal is reported in the state, not as an error.
// Wait may be called several times, from several goroutines: the process
// is waited for once, and every call returns that result (a second wait
// on one process would race the first for its exit status).
func (s *Sandbox) Wait() (*os.ProcessState, error) {
	s.waitOnce.Do(func() {
		st, err := s.p.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			st, err = ee.ProcessState, nil
		}
		s.waitState, s.waitErr = st, err
	})
	return s.waitState, s.waitErr
}

// Signal sends sig to the sandbox's process.
func (s *Sandbox) Signal(sig os.Signal) error { return s.p.Signal(sig) }

// Kill SIGKILLs the sandbox's process.
func (s *Sandbox) Kill() error { return s.p.Signal(unix.SIGKILL) }

// OOMKilled reports whether the kernel's OOM killer acted in the sandbox's
// cgroup (call it after Wait, before Destroy).
func (s *Sandbox) OOMKilled() bool { return oomKilled(s.c) }

// Destroy kills whatever is left in the container and removes its state and
// cgroup. Call it after Wait. It is idempotent.
func (s *Sandbox) Destroy() error {
	s.once.Do(func() {
		s.c.Signal(unix.SIGKILL)
		s.derr = s.c.Destroy()
		s.rt.mu.Lock()
		delete(s.rt.live, s.c.ID())
		s.rt.mu.Unlock()
	})
	return s.derr
}

// Live returns the ids of the sandboxes started and not yet destroyed,
// sorted.
func (r *Runtime) Live() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.live))
	for id := range r.live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Close kills and destroys every live sandbox and removes the cgroup root.
func (r *Runtime) Close() error {
	r.mu.Lock()
	var all []*Sandbox
	for _, sb := range r.live {
		if sb != nil {
			all = append(all, sb)
		}
	}
	r.mu.Unlock()
	var errs []error
	for _, sb := range all {
		sb.Kill()
		sb.Wait()
		if err := sb.Destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroupTree(r.cfg.CgroupRoot); err != nil {
		errs = append(errs, err)
	}
	r.quitOnce.Do(func() {
		close(r.quit)
		unix.Unmount(r.skeleton, unix.MNT_DETACH)
	})
	<-r.forkDone
	return errors.Join(errs...)
}

// deviceFromPath describes the host device node at path, read-write.
func deviceFromPath(path string) (*devconfig.Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, err
	}
	var typ devconfig.Type
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		typ = devconfig.CharDevice
	case unix.S_IFBLK:
		typ = devconfig.BlockDevice
	default:
		return nil, fmt.Errorf("not a device node")
	}
	return &devconfig.Device{
		Rule: devconfig.Rule{Type: typ, Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)),
			Permissions: "rwm", Allow: true},
		Path: path, FileMode: os.FileMode(st.Mode & 0o777), Uid: st.Uid, Gid: st.Gid,
	}, nil
}
