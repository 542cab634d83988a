package pid1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Test images only: the debug port lets the end-to-end test kill a child
// inside the guest, as a crash would, to see the supervisor restart and
// report it. It is enabled only when the image contains DebugMarker (the
// initramfs is measured, so a verifier sees a debug image for what it is)
// and qemu gives the VM a virtio-serial port named DebugPortName.
const (
	// DebugMarker is the file whose presence in the image enables the port.
	DebugMarker = "/etc/cvmd/debug-port"
	// DebugPortName is the virtio-serial port's name (virtserialport name=).
	DebugPortName = "cvmd.debug"
)

// DebugCommand is one request on the debug port: "kill NAME" sends SIGKILL
// to the cvmd child NAME; "ping" answers "pong"; "ps" lists every process as
// pid:name:state:wchan on one line; "stacks" gives every process's kernel
// stack (/proc/PID/stack); "goroutines" sends SIGQUIT to the supervisor
// proper, whose Go runtime then prints every goroutine's stack on the
// console and exits (PID 1 starts a new one). The last three explain a hang.
// "mem" reports the guest's memory and "drop-caches" writes back and drops
// the page cache (the scratch disk's tests: memory while a dataset streams
// in, and reads that reach the disk, see storage_debug.go).
type DebugCommand struct {
	Verb, Arg string
}

// debugVerbs are the commands without an argument.
var debugVerbs = map[string]bool{"ping": true, "ps": true, "stacks": true, "goroutines": true, "mem": true, "drop-caches": true}

// ParseDebugCommand parses one line of the debug port.
func ParseDebugCommand(line string) (DebugCommand, error) {
	f := strings.Fields(line)
	switch {
	case len(f) == 1 && debugVerbs[f[0]]:
		return DebugCommand{Verb: f[0]}, nil
	case len(f) == 2 && f[0] == "kill" && validChildName(f[1]):
		return DebugCommand{Verb: "kill", Arg: f[1]}, nil
	}
	return DebugCommand{}, fmt.Errorf("pid1: debug command %q: want \"ping\", \"ps\", \"stacks\", \"goroutines\", \"mem\", \"drop-caches\" or \"kill CHILD\"", line)
}

func validChildName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// startDebugPort serves the debug port when the image enables it. Like the
// power-button watcher, its goroutine lives as long as the process.
func startDebugPort(log *slog.Logger) error {
	if _, err := os.Stat(DebugMarker); err != nil {
		return nil
	}
	dev, err := findVirtioPort(DebugPortName)
	if err != nil {
		return err
	}
	log.Warn("pid1: DEBUG PORT ENABLED: the host can kill children (test image)", "device", dev)
	go func() {
		for {
			// read() returns EOF while the host end is not connected: reopen.
			err := serveDebug(log, dev)
			log.Debug("pid1: debug port closed", "err", err)
			unix.Nanosleep(&unix.Timespec{Nsec: 100e6}, nil)
		}
	}()
	return nil
}

// findVirtioPort returns the /dev node of the virtio-serial port named name.
func findVirtioPort(name string) (string, error) {
	ents, err := os.ReadDir("/sys/class/virtio-ports")
	if err != nil {
		return "", fmt.Errorf("pid1: debug port: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/sys/class/virtio-ports", e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", e.Name()), nil
		}
	}
	return "", fmt.Errorf("pid1: debug port: no virtio-serial port named %s", name)
}

func serveDebug(log *slog.Logger, dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fmt.Fprintln(f, runDebug(log, sc.Text()))
	}
	if sc.Err() == nil {
		return io.EOF
	}
	return sc.Err()
}

func runDebug(log *slog.Logger, line string) string {
	c, err := ParseDebugCommand(line)
	if err != nil {
		return "error: " + err.Error()
	}
	switch c.Verb {
	case "ping":
		return "pong"
	case "ps":
		return processList()
	case "stacks":
		return kernelStacks()
	case "goroutines":
		return dumpProper(log)
	case "mem":
		return memoryReport()
	case "drop-caches":
		return dropCaches()
	}
	pids, err := childPIDs(c.Arg)
	if err != nil {
		return "error: " + err.Error()
	}
	if len(pids) == 0 {
		return "error: no running child " + c.Arg
	}
	var errs []error
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return "error: " + err.Error()
	}
	log.Warn("pid1: debug port killed a child", "child", c.Arg, "pids", pids)
	return fmt.Sprintf("killed %s %v", c.Arg, pids)
}

// childPIDs finds the processes running cvmd's child name: their argv is
// [<cvmd>, name, ...] (the supervisor re-executes itself inside the sandbox).
func childPIDs(name string) ([]int, error) { return processesWithArgs(name) }

// processesWithArgs finds the other processes whose argv, after argv[0],
// starts with args.
func processesWithArgs(args ...string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
		if len(argv) < 1+len(args) {
			continue
		}
		match := true
		for i, a := range args {
			match = match && string(argv[1+i]) == a
		}
		if match {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// processList describes every process as pid:name:state:wchan, space-separated.
func processList() string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return "error: " + err.Error()
	}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		st := string(stat)
		lp, rp := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if lp < 0 || rp < lp || rp+3 > len(st) {
			continue
		}
		wchan, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "wchan"))
		name := strings.ReplaceAll(st[lp+1:rp], " ", "_")
		out = append(out, fmt.Sprintf("%s:%s:%c:%s", e.Name(), name, st[rp+2], wchan))
	}
	return strings.Join(out, " ")
}

// kernelStacks gives, for every process, "pid:name:" and its kernel stack's
// function names, comma-separated, in one space-separated line.
func kernelStacks() string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return "error: " + err.Error()
	}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stack"))
		if err != nil {
			continue
		}
		var fns []string
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			// "[<0>] do_wait+0x160/0x2f0"
			if _, fn, ok := strings.Cut(l, "] "); ok {
				fn, _, _ = strings.Cut(fn, "+")
				fns = append(fns, fn)
			}
		}
		name := strings.ReplaceAll(strings.TrimSpace(string(comm)), " ", "_")
		out = append(out, fmt.Sprintf("%s:%s:%s", e.Name(), name, strings.Join(fns, ",")))
	}
	return strings.Join(out, " ")
}

// dumpProper sends SIGQUIT to the supervisor proper (the process whose argv
// is [<cvmd>, "supervise", "--proper", ...]).
func dumpProper(log *slog.Logger) string {
	pids, err := processesWithArgs("supervise", "--proper")
	if err != nil {
		return "error: " + err.Error()
	}
	if len(pids) == 0 {
		return "error: no supervisor proper running"
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGQUIT); err != nil {
			return fmt.Sprintf("error: SIGQUIT to %d: %v", pid, err)
		}
	}
	log.Warn("pid1: debug port made the supervisor proper dump its goroutines", "pids", pids)
	return fmt.Sprintf("sigquit %v", pids)
}
