// Command cvmd is the guest binary: the supervisor (PID 1) and every child,
// chosen by the first argument. It is a dispatch table and an exit code.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/children/attestation"
	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/children/egress"
	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/children/logfwd"
	"github.com/cvmd/cvmd/children/runner"
	"github.com/cvmd/cvmd/children/runner/wasmrun"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor"
	"github.com/cvmd/cvmd/supervisor/probe"

	// nsenter's cgo constructor runs before the Go runtime in every
	// invocation; it acts only in libcontainer's `init` re-exec.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	// Runs libcontainer's `init` re-exec before most of the binary's
	// package initialisers (the init below is then only a fallback).
	_ "github.com/cvmd/cvmd/sandbox/initfirst"
)

// init claims libcontainer's re-exec (`<exe> init`, with its init pipe in the
// environment) before anything else runs; sandbox.Init never returns. The
// supervisor's own entry is `supervise` (or no argument as PID 1), so the
// two are never confused.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		sandbox.Init()
	}
}

// children are internal entries: only the supervisor starts them.
var children = map[string]child.Main{
	"agent":       agent.Main,
	"runner":      runner.Main,
	"attestation": attestation.Main,
	"ingress":     ingress.Main,
	"egress":      egress.Main,
	"logfwd":      logfwd.Main,
}

func main() {
	// Keep the main thread for the main goroutine. libcontainer runs some
	// work on goroutines that lock their thread, setns(2) into a container
	// and exit without unlocking, so that the thread dies with them; Go can
	// never end the main thread, so if such a goroutine ran there the
	// process's main thread would stay in that container's mount namespace
	// for good (keeping its mounts alive and making /proc/PID/ns/mnt lie).
	runtime.LockOSThread()
	os.Exit(run(os.Args))
}

func run(args []string) int {
	// PID 1 with no arguments is the supervisor: that is how the kernel starts /init.
	if len(args) < 2 {
		if os.Getpid() == 1 {
			return exit(supervisor.Main(nil))
		}
		usage()
		return 2
	}
	switch name := args[1]; name {
	case "supervise":
		return exit(supervisor.Main(args[2:]))
	case "probe": // hidden, tests only: looks at a child's sandbox from inside
		return exit(probe.Main(args[2:]))
	case "wasm-run": // inside an algorithm sandbox only: the runtime of wasm algorithms
		return wasmrun.Command(args[2:])
	case "help", "-h", "--help":
		usage()
		return 0
	default:
		if m, ok := children[name]; ok {
			return exit(child.Run(name, m))
		}
		fmt.Fprintf(os.Stderr, "cvmd: unknown command %q\n", name)
		usage()
		return 2
	}
}

func exit(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "cvmd: %v\n", err)
		return 1
	}
	return 0
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: cvmd supervise [flags]   run the supervisor (what PID 1 runs with no arguments)
       cvmd supervise --help     the supervisor's flags

Internal commands, started by the supervisor only:
  agent, runner, attestation, ingress, egress, logfwd   the children
  init                                                   libcontainer's re-exec
`)
}
