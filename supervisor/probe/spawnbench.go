package probe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer/exeseal"
	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/sandbox"
)

// spawnBench serves timed spawns for the benchmarks, one per line read on
// stdin, and answers each with one line: the µs from the start of the spawn
// to the child's first byte on fd 3, and the µs of CPU the command cost this
// process and its children, the sandbox's processes included (or
// "error: ..." before it exits).
//
//	pool  Exec of a sandbox built ahead (Create): how the supervisor starts a
//	      child created at boot once its dependencies are READY; a standby
//	      goes further (its program runs already) and is timed by the
//	      restart benchmark. The next one is built, untimed, before the
//	      answer, so that no build overlaps a later measurement.
//	cold  Create and start of a new sandbox (Runtime.Start).
//	runc  `runc run` of a bundle made from the same sandbox.Spec (see
//	      runcBundle): the reference, measured the same way.
//
// Every child is `probe in ready` of this binary, which writes one byte on
// fd 3: cvmd's run /proc/self/exe (the sealed binary, as the supervisor's
// children do), runc's the same file bound at /cvmd.
//
// probe spawnbench DIR
func spawnBench(args []string) error {
	if len(args) != 1 {
		return errors.New("probe spawnbench: want DIR")
	}
	dir := args[0]
	if !exeseal.IsSelfExeCloned() {
		// Run like the supervisor proper does: from a sealed memfd copy, so
		// libcontainer does not clone the binary for every spawn. The file
		// itself is what runc's child runs.
		self, err := os.Executable()
		if err != nil {
			return err
		}
		f, err := os.Open("/proc/self/exe")
		if err != nil {
			return err
		}
		st, _ := f.Stat()
		exe, err := exeseal.CloneBinary(f, st.Size(), "/proc/self/exe", os.TempDir())
		f.Close()
		if err != nil {
			return err
		}
		os.Setenv("CVMD_SPAWNBENCH_FILE", self)
		return unix.Exec(fmt.Sprintf("/proc/self/fd/%d", exe.Fd()), []string{"cvmd", "probe", "spawnbench", dir}, os.Environ())
	}
	b, err := newBench(dir, os.Getenv("CVMD_SPAWNBENCH_FILE"))
	if err != nil {
		return err
	}
	defer b.close()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var d time.Duration
		cpu0 := cpuTime()
		switch mode := strings.TrimSpace(in.Text()); mode {
		case "pool":
			d, err = b.pool()
		case "cold":
			d, err = b.cold()
		case "runc":
			d, err = b.runc()
		default:
			err = fmt.Errorf("unknown mode %q", mode)
		}
		if err != nil {
			fmt.Printf("error: %v\n", err)
			return fmt.Errorf("probe spawnbench: %w", err)
		}
		fmt.Println(d.Microseconds(), (cpuTime() - cpu0).Microseconds())
	}
	return in.Err()
}

// cpuTime is the CPU time of this process and of its children waited for.
func cpuTime() time.Duration {
	var self, children unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &self)
	unix.Getrusage(unix.RUSAGE_CHILDREN, &children)
	return time.Duration(self.Utime.Nano() + self.Stime.Nano() + children.Utime.Nano() + children.Stime.Nano())
}

type bench struct {
	rt     *sandbox.Runtime
	root   string // cgroup root of every sandbox, cvmd's and runc's
	bundle string // runc's bundle
	state  string // runc's --root
	n      int
	next   *prepared // the pool's sandbox, built ahead
}

// prepared is a created sandbox and the read end of its fd 3.
type prepared struct {
	sb *sandbox.Sandbox
	r  *os.File
}

func newBench(dir, file string) (*bench, error) {
	if file == "" {
		return nil, errors.New("no binary file for runc's child")
	}
	b := &bench{root: fmt.Sprintf("cvmd-spawnbench-%d", os.Getpid()), bundle: filepath.Join(dir, "bundle"), state: filepath.Join(dir, "runc")}
	var err error
	if b.rt, err = sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: filepath.Join(dir, "sandbox"), CgroupRoot: b.root}); err != nil {
		return nil, err
	}
	if err := writeRuncBundle(b.bundle, benchSpec("runc"), b.root, file); err != nil {
		b.rt.Close()
		return nil, err
	}
	return b, nil
}

// benchSpec is the sandbox of every benchmark spawn: the supervisor's
// defaults for a child (its own namespaces, fd-only seccomp profile, no
// capabilities, read-only empty rootfs with /proc, /dev, read-only /sys
// and a /tmp tmpfs) with a child's cgroup limits.
func benchSpec(id string) *sandbox.Spec {
	return &sandbox.Spec{ID: id, Args: []string{"/proc/self/exe", "probe", "in", "ready"},
		Env:    []string{"PATH=/usr/bin:/bin", "GOMAXPROCS=2"},
		Mounts: []sandbox.Mount{{Kind: sandbox.Tmpfs, Dest: "/tmp"}}, Limits: sandbox.Limits{MemoryBytes: 64 << 20, Pids: 64}}
}

func (b *bench) id() string {
	b.n++
	return fmt.Sprintf("spawn%d", b.n)
}

// firstByte reads the child's byte and reports when it came.
func firstByte(r *os.File) (time.Time, error) {
	buf := make([]byte, 1)
	_, err := r.Read(buf)
	return time.Now(), err
}

func (b *bench) prepare() (*prepared, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	sb, err := b.rt.Create(benchSpec(b.id()), sandbox.IO{ExtraFiles: []*os.File{w}})
	if err != nil {
		r.Close()
		return nil, err
	}
	return &prepared{sb: sb, r: r}, nil
}

func (p *prepared) end() {
	p.r.Close()
	p.sb.Wait()
	p.sb.Destroy()
}

func (b *bench) pool() (time.Duration, error) {
	if b.next == nil {
		p, err := b.prepare()
		if err != nil {
			return 0, err
		}
		b.next = p
	}
	p := b.next
	b.next = nil
	t0 := time.Now()
	err := p.sb.Exec()
	var t1 time.Time
	if err == nil {
		t1, err = firstByte(p.r)
	}
	p.end()
	if err != nil {
		return 0, err
	}
	if b.next, err = b.prepare(); err != nil {
		return 0, err
	}
	return t1.Sub(t0), nil
}

func (b *bench) cold() (time.Duration, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	sb, err := b.rt.Start(benchSpec(b.id()), sandbox.IO{ExtraFiles: []*os.File{w}})
	w.Close()
	if err != nil {
		r.Close()
		return 0, err
	}
	p := &prepared{sb: sb, r: r}
	t1, err := firstByte(r)
	p.end()
	return t1.Sub(t0), err
}

func (b *bench) runc() (time.Duration, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	var out strings.Builder
	cmd := exec.Command("runc", "--root", b.state, "run", "--no-new-keyring", "--preserve-fds", "1", "--bundle", b.bundle, b.id())
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, err
	}
	t1, rerr := firstByte(r)
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("runc run: %v: %s", err, out.String())
	}
	if rerr != nil {
		return 0, fmt.Errorf("runc run: no byte from the child: %v: %s", rerr, out.String())
	}
	return t1.Sub(t0), nil
}

func (b *bench) close() {
	if b.next != nil {
		b.next.sb.Kill()
		b.next.end()
	}
	b.rt.Close() // also removes runc's leftovers under the cgroup root
}
