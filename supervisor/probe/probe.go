// Package probe is a test-only tool built into the test build of cvmd
// (-tags cvmdtest, make's bin/cvmd-test) as the hidden `cvmd probe`
// command; the measured binary does not have it. It looks at a running
// child's sandbox from the inside:
// `probe exec` runs `probe in ...` inside an existing child container
// (joining its namespaces and cgroup, under its capabilities, seccomp
// profile and no-new-privileges, like `runc exec`), and `probe in` tries
// what a child must not be able to do and prints what happened. `probe
// spawnbench` times sandboxed spawns for the benchmarks (cvmd's, and
// `runc run` of the same sandbox as their reference), and `probe child`
// stands in for a child that breaks the child contract (--test-misbehave).
//
// The supervisor never runs it and children cannot reach it; only tests
// (tests/supervisor) do. It imports sandbox and libcontainer; nothing
// imports it but cmd/cvmd.
package probe

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/control"
)

// Main is `cvmd probe <mode> ...`.
func Main(args []string) error {
	if len(args) == 0 {
		return errors.New("probe: want exec, in or spawnbench")
	}
	switch args[0] {
	case "exec":
		return execIn(args[1:])
	case "in":
		return inside(args[1:])
	case "spawnbench":
		return spawnBench(args[1:])
	case "child":
		return misbehave(args[1:])
	}
	return fmt.Errorf("probe: unknown mode %q", args[0])
}

// execIn runs `probe in ARGS` inside the container of a child:
// probe exec CONTAINERS_DIR CHILD ARGS...
// It must run in the supervisor's PID and mount namespaces (nsenter), where
// the container state's pids mean what they say.
func execIn(args []string) error {
	if len(args) < 3 {
		return errors.New("probe exec: want CONTAINERS_DIR CHILD ARGS")
	}
	c, err := libcontainer.Load(args[0], args[1])
	if err != nil {
		return fmt.Errorf("probe exec: loading %s: %w", args[1], err)
	}
	// /proc/1/exe inside the container is the child's own (sealed) binary.
	p := &libcontainer.Process{
		Args:   append([]string{"/proc/1/exe", "probe", "in"}, args[2:]...),
		Env:    []string{"PATH=/"},
		Cwd:    "/",
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Init:   false,
	}
	if err := c.Run(p); err != nil {
		return fmt.Errorf("probe exec: running in %s: %w", args[1], err)
	}
	st, err := p.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		st = ee.ProcessState
	} else if err != nil {
		return fmt.Errorf("probe exec: waiting: %w", err)
	}
	fmt.Printf("exit:%s\n", st)
	return nil
}

// writeExe tries to write the binary this process runs (CVE-2019-5736: a
// container overwriting its runtime). It writes back the byte it read, so
// that even a broken seal leaves the binary as it was.
func writeExe() error {
	f, err := os.OpenFile("/proc/self/exe", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 0); err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	return err
}

func errno(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// inside runs checks from within a sandbox and prints "name:result" lines.
func inside(args []string) error {
	if len(args) == 0 {
		return errors.New("probe in: want a check")
	}
	switch args[0] {
	case "syscalls":
		report := func(name string, err error) { fmt.Printf("%s:%v\n", name, err) }
		report("mount", unix.Mount("tmpfs", "/tmp", "tmpfs", 0, ""))
		report("unshare", unix.Unshare(unix.CLONE_NEWUSER|unix.CLONE_NEWNS))
		_, _, e := unix.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		report("ptrace", errno(e))
		_, _, e = unix.Syscall(unix.SYS_BPF, 0, 0, 0)
		report("bpf", errno(e))
		_, _, e = unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0)
		report("kexec_load", errno(e))
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		report("socket", err)
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
		report("socketpair", err)
		report("write-root", os.WriteFile("/probe", []byte("x"), 0o600))
		report("write-exe", writeExe())
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Seccomp:") || strings.HasPrefix(l, "CapEff:") || strings.HasPrefix(l, "NoNewPrivs:") {
				k, v, _ := strings.Cut(l, ":")
				fmt.Printf("%s:%s\n", k, strings.TrimSpace(v))
			}
		}
	case "hog":
		var keep [][]byte
		for i := 0; i < 4096; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
			if i%64 == 0 {
				fmt.Printf("hog:%d MiB\n", i)
			}
		}
		fmt.Printf("hog:survived %d MiB\n", len(keep))
	case "forkbomb":
		var procs []*os.Process
		defer func() {
			for _, p := range procs {
				p.Kill()
				p.Wait()
			}
		}()
		for i := 0; i < 1000; i++ {
			p, err := os.StartProcess("/proc/self/exe", []string{"probe", "probe", "in", "sleep"}, &os.ProcAttr{})
			if err != nil {
				fmt.Printf("forkbomb:stopped after %d: %v\n", i, err)
				return nil
			}
			procs = append(procs, p)
		}
		fmt.Printf("forkbomb:not stopped after %d\n", len(procs))
	case "sleep":
		time.Sleep(time.Minute)
	case "ready":
		os.NewFile(3, "ready").Write([]byte{1})
	default:
		return fmt.Errorf("probe in: unknown check %q", args[0])
	}
	return nil
}

// misbehave stands in for a child and breaks the child contract in one
// way: probe child garbage|silent|startfail|crash|stubborn (says READY,
// then ignores Stop and SIGTERM: only SIGKILL ends it).
func misbehave(args []string) error {
	if len(args) != 1 {
		return errors.New("probe child: want a mode")
	}
	f, err := ipc.NewFile(3, "control")
	if err != nil {
		return err
	}
	ctl := ipc.NewControl(f)
	if _, files, err := ctl.Recv(); err == nil { // the Hello
		for _, f := range files {
			f.Close()
		}
	}
	switch args[0] {
	case "garbage":
		// Not a control.Message: an invalid protobuf tag.
		raw := os.NewFile(3, "control-raw")
		unix.Write(int(raw.Fd()), []byte{0xff, 0xff, 0xff, 0x0f})
		time.Sleep(time.Minute)
	case "silent":
		time.Sleep(time.Minute)
	case "startfail":
		ctl.Send(&control.Message{Body: &control.Message_StartFailed{StartFailed: &control.StartFailed{Error: "probe: cannot start: the disk is on fire"}}}, nil)
		os.Exit(1)
	case "crash":
		os.Exit(3)
	case "stubborn":
		signal.Ignore(unix.SIGTERM)
		if err := ctl.Send(&control.Message{Body: &control.Message_Ready{Ready: &control.Ready{}}}, nil); err != nil {
			return err
		}
		for {
			time.Sleep(time.Hour)
		}
	}
	return fmt.Errorf("probe child: unknown mode %q", args[0])
}
