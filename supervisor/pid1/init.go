package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer/exeseal"
	"golang.org/x/sys/unix"
)

// Config is how PID 1 runs.
type Config struct {
	// Args are the flags of `cvmd supervise` as PID 1 was given them; PID 1
	// passes them on to the supervisor proper (after --proper) and to its
	// own re-executions.
	Args []string
	// Dev is set in development mode: PID 1 of new PID and mount namespaces
	// on a workstation (no VM set-up; exit instead of powering off).
	Dev bool
	// Sealed is set when PID 1 already set up the system and re-executed
	// from a sealed copy of its binary (--sealed).
	Sealed bool
	// Rooted is set when PID 1 already mounted, moved the root and loaded
	// the modules, and re-executed from the new root; it only seals its
	// binary (--rooted).
	Rooted bool
	// ProperGrace is how long the supervisor proper has to stop its
	// children at shutdown before PID 1 kills it.
	ProperGrace time.Duration
	// RemoveCgroups removes the supervisor proper's cgroups at shutdown
	// (normally the proper did; if it had to be killed, nothing else will).
	// nil: nothing to remove.
	RemoveCgroups func() error
	// Log receives PID 1's own log.
	Log *slog.Logger
}

// initProcess is the minimal PID 1: it owns no children but the supervisor proper,
// reaps every orphan, turns SIGTERM/SIGINT/SIGPWR into one orderly
// shutdown, and restarts the supervisor proper whenever it dies (a panic
// there must not kill PID 1: the kernel panics when PID 1 exits).
type initProcess struct {
	cfg    Config
	log    *slog.Logger
	args   []string // of the supervisor proper
	proper *os.Process
	starts []time.Time
	// stopping is set once shutdown asked the proper to stop.
	stopping bool
}

// Run is PID 1: it sets the system up (in the VM: mounts, the root moved
// into a tmpfs, kernel modules, the guest's devices; in dev mode: private
// mounts and a fresh /proc), seals its binary, then runs the supervisor
// proper as its only managed child until a shutdown signal. In the VM it
// never returns: it powers off.
func Run(cfg Config) error {
	log := cfg.Log
	args := cfg.Args
	// The supervisor proper's Pdeathsig follows the forking thread: keep
	// every fork on this one.
	runtime.LockOSThread()
	if !cfg.Sealed {
		switch {
		case cfg.Rooted:
			// Re-executed from the moved root below: mounts and modules are done.
		case cfg.Dev:
			if err := devMounts(); err != nil {
				return err
			}
		default:
			moved, err := vmSetup(log)
			if err != nil {
				// Keep going: a half-mounted system still gets a supervisor and a log line.
				log.Error("PID 1 setup incomplete", "err", err)
			}
			// Before sealing: the overlay it uses may be a module.
			if err := LoadModules(log); err != nil {
				log.Error("kernel modules incomplete", "err", err)
			}
			if self, _ := os.Readlink("/proc/self/exe"); moved && filepath.IsAbs(self) {
				// This process runs the initramfs's file, now deleted; run its
				// copy at the same path in the new root instead, so that the
				// initramfs's memory is freed and the overlay can seal the
				// file we run.
				self = strings.TrimSuffix(self, " (deleted)")
				err := unix.Exec(self, append([]string{"cvmd", "supervise", "--rooted"}, args...), os.Environ())
				log.Warn("cannot re-execute from the new root", "path", self, "err", err)
			}
		}
		// A child must never be able to write the binary it runs
		// (CVE-2019-5736). sealing picks the cheaper of the two ways; in
		// the VM that is one copy (see sealing).
		exe, why, err := sealing(!cfg.Dev)
		switch {
		case err == nil && exe == nil:
			log.Info("binary sealed per spawn by a read-only overlay")
		case err == nil:
			log.Info("binary sealed by one memfd copy", "why", why)
			err = unix.Exec(fmt.Sprintf("/proc/self/fd/%d", exe.Fd()), append([]string{"cvmd", "supervise", "--sealed"}, args...), os.Environ())
			fallthrough
		default:
			log.Warn("running from the unsealed binary; each spawn will copy it", "err", err)
		}
	}
	p := &initProcess{cfg: cfg, log: log, args: append([]string{"supervise", "--proper"}, stripSealed(args)...)}
	if !cfg.Dev {
		// Last line of defence: PID 1 exiting panics the kernel. Should this
		// small loop ever panic, kill the supervisor proper (its children die
		// with it) and start PID 1 over from its own binary.
		defer func() {
			if r := recover(); r != nil {
				log.Error("PID 1 panicked; starting over", "panic", r)
				if p.proper != nil {
					p.proper.Kill()
				}
				err := unix.Exec("/proc/self/exe", append([]string{"cvmd", "supervise", "--sealed"}, stripSealed(args)...), os.Environ())
				log.Error("PID 1 cannot start over", "err", err)
				for { // never return: the VM must not panic
					time.Sleep(time.Hour)
				}
			}
		}()
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGPWR, unix.SIGCHLD)
	if !cfg.Dev {
		// The image's devices, after the mounts and before the supervisor
		// proper (which reads the 9p env file and dials the manager): 9p
		// shares, eth0, and the power button as SIGPWR (the modules were
		// loaded before sealing). In the process that stays PID 1: its
		// goroutines (the power button, a test image's debug port) would not
		// survive a re-execution.
		if err := Prepare(log); err != nil {
			log.Error("guest devices incomplete", "err", err)
		}
	}
	tick := time.NewTicker(time.Second) // in case a SIGCHLD was coalesced
	defer tick.Stop()
	var restart <-chan time.Time
	p.start()
	for {
		select {
		case sig := <-sigs:
			if sig == unix.SIGCHLD {
				if p.reap() {
					restart = p.scheduleRestart()
				}
				continue
			}
			log.Info("shutdown requested", "signal", sig)
			return p.shutdown()
		case <-tick.C:
			if p.reap() {
				restart = p.scheduleRestart()
			}
		case <-restart:
			restart = nil
			p.start()
		}
	}
}

func (p *initProcess) start() {
	attr := &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Env:   os.Environ(),
		Sys:   &unix.SysProcAttr{Pdeathsig: unix.SIGKILL},
	}
	proc, err := os.StartProcess("/proc/self/exe", append([]string{"cvmd"}, p.args...), attr)
	if err != nil {
		p.log.Error("starting the supervisor proper", "err", err)
		p.proper = nil
		return
	}
	p.proper = proc
	p.starts = append(p.starts, time.Now())
	p.log.Info("supervisor proper started", "pid", proc.Pid)
}

// scheduleRestart returns when to start the supervisor proper again: at
// once the first time, then with a back-off up to 2 s while it keeps dying.
func (p *initProcess) scheduleRestart() <-chan time.Time {
	recent := 0
	for _, t := range p.starts {
		if time.Since(t) < 10*time.Second {
			recent++
		}
	}
	d := time.Duration(0)
	if recent > 1 {
		d = min(100*time.Millisecond<<(recent-2), 2*time.Second)
	}
	p.log.Info("restarting the supervisor proper", "in", d)
	return time.After(d)
}

// reap collects every exited child. It peeks with WNOWAIT first so that it
// reaps the supervisor proper through its os.Process (which owns that exit
// status) and only the orphans with wait4. It reports whether the
// supervisor proper exited.
func (p *initProcess) reap() (properExited bool) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		pid := siginfoPid(&info)
		if err != nil || pid == 0 {
			return properExited
		}
		if p.proper != nil && pid == p.proper.Pid {
			st, werr := p.proper.Wait()
			if p.stopping {
				p.log.Info("supervisor proper stopped", "status", fmt.Sprint(st), "err", werr)
			} else {
				p.log.Error("supervisor proper exited", "status", fmt.Sprint(st), "err", werr)
			}
			p.proper = nil
			properExited = true
			continue
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != nil && err != unix.EINTR {
			return properExited
		}
		p.log.Debug("reaped orphan", "pid", pid)
	}
}

// shutdown stops the supervisor proper (which stops the children in
// reverse dependency order), kills whatever is left, syncs, and powers off
// (or exits in dev mode).
func (p *initProcess) shutdown() error {
	p.stopping = true
	if p.proper != nil {
		p.proper.Signal(unix.SIGTERM)
		deadline := time.Now().Add(p.cfg.ProperGrace)
		for p.proper != nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			p.reap()
		}
		if p.proper != nil {
			p.log.Warn("supervisor proper did not stop in time; killing it")
			p.proper.Kill()
		}
	}
	// Everything else in this PID namespace (or the VM) goes now.
	unix.Kill(-1, unix.SIGKILL)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			break
		}
		if pid == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	// Normally the supervisor proper removed its cgroups; if it had to be
	// killed, nothing else will.
	if rm := p.cfg.RemoveCgroups; rm != nil {
		if err := rm(); err != nil {
			p.log.Warn("removing cgroups", "err", err)
		}
	}
	unix.Sync()
	p.log.Info("stopped")
	if !p.cfg.Dev {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		p.log.Error("power off failed; halting here", "err", err)
		for { // PID 1 must not exit (and select{} could be called a deadlock)
			time.Sleep(time.Hour)
		}
	}
	return nil
}

// RunDev is the dev launcher: it re-executes `cvmd supervise` with args as
// PID 1 of new PID and mount namespaces and waits for it, passing on
// SIGTERM, SIGINT and SIGPWR.
func RunDev(args []string, log *slog.Logger) error {
	runtime.LockOSThread() // Pdeathsig follows the forking thread
	cmd := exec.Command("/proc/self/exe", append([]string{"supervise"}, args...)...)
	cmd.Args[0] = "cvmd"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS, Pdeathsig: unix.SIGKILL}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("supervise: starting PID 1 in new namespaces: %w", err)
	}
	log.Debug("dev PID 1 started", "host_pid", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			cmd.Process.Signal(sig)
		case err := <-done:
			if err != nil {
				return fmt.Errorf("supervise: dev PID 1: %w", err)
			}
			return nil
		}
	}
}

// sealing decides how children are kept from writing the binary. When the
// file this process runs is reachable by its path and the kernel has
// overlayfs, libcontainer seals each spawn's binary through a detached
// read-only overlay of its directory: no copy, and every process shares the
// file's page cache. sealing then returns nil. Otherwise (no overlayfs, or
// the VM's PID 1, whose initramfs file is hidden under the tmpfs root it
// moved to, where the path now names a copy) it returns a sealed memfd copy
// of the binary for PID 1 to re-execute from once, so that libcontainer
// does not copy it for every spawn and all processes share the memfd's
// pages.
//
// inVM asks for the copy always. The VM's IMA policy (ima.go) measures
// every execution, and IMA keeps what it measured per inode: each spawn's
// overlay is a new inode, so every spawn had the kernel hash the whole
// binary (23 MB) before libcontainer's init could run, non-preemptibly.
// Under TCG on a loaded host that took tens of seconds per spawn: children
// missed their READY timeouts, their restarts hashed again, and boots
// stalled for minutes (make soak-vm's dumps: the spawns' execve in
// ima_calc_file_hash through ovl_read_iter). One sealed copy is one inode:
// hashed once, when the supervisor proper starts. The path's file, which
// nothing runs from then on, is removed, so the copy costs no memory.
func sealing(inVM bool) (exe *os.File, why string, err error) {
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return nil, "", err
	}
	defer self.Close()
	st, err := self.Stat()
	if err != nil {
		return nil, "", err
	}
	path, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil, "", err
	}
	switch byPath, err := os.Stat(path); {
	case err != nil || !os.SameFile(st, byPath):
		why = fmt.Sprintf("%s is not the file this process runs", path)
	case inVM:
		exe, err := exeseal.CloneBinary(self, st.Size(), "/proc/self/exe", os.TempDir())
		if err != nil {
			return nil, "", err
		}
		// Only this process runs the file, and it is about to run the copy.
		if err := os.Remove(path); err != nil {
			exe.Close()
			return nil, "", fmt.Errorf("removing %s once copied: %w", path, err)
		}
		return exe, "IMA measures each spawn's overlay anew; a copy is measured once", nil
	default:
		exe, err := exeseal.CloneSelfExe(os.TempDir())
		if err != nil {
			return nil, "", err
		}
		if !exeseal.IsCloned(exe) {
			exe.Close() // an overlay handle: libcontainer makes its own per spawn
			return nil, "", nil
		}
		// No overlayfs: exeseal fell back to a sealed memfd copy.
		return exe, "no overlayfs", nil
	}
	exe, err = exeseal.CloneBinary(self, st.Size(), "/proc/self/exe", os.TempDir())
	return exe, why, err
}

func stripSealed(args []string) []string {
	var out []string
	for _, a := range args {
		if a != "--sealed" && a != "-sealed" && a != "--rooted" && a != "-rooted" {
			out = append(out, a)
		}
	}
	return out
}
