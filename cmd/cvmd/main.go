// Command cvmd is the guest binary: the supervisor (PID 1) and every child,
// chosen by the first argument. It is a dispatch table and an exit code:
// the children's entries come from the child table (supervisor/table), so
// adding a child changes nothing here.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor"
	"github.com/cvmd/cvmd/supervisor/table"

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

// command is one `cvmd <name>` entry: it gets the arguments after the name
// and returns the exit status.
type command func(args []string) int

// commands is the dispatch table: the supervisor, and for each child of the
// table its entry point (internal: only the supervisor starts them) and the
// other commands its package provides. A name given twice panics.
func commands() map[string]command {
	m := map[string]command{}
	add := func(name string, c command) {
		if _, dup := m[name]; dup {
			panic(fmt.Sprintf("cvmd: command %q defined twice", name))
		}
		m[name] = c
	}
	add("supervise", func(args []string) int { return exit(supervisor.Main(args)) })
	for name, c := range testCommands() {
		add(name, c)
	}
	for _, c := range table.Default().Children {
		add(c.Name, func([]string) int { return exit(child.Run(c.Name, c.Main)) })
		for name, cmd := range c.Commands {
			add(name, cmd)
		}
	}
	return m
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
	if os.Getpid() == 1 {
		if ignored := kernelWords(args, commands()); len(args) < 2 || ignored != nil {
			if ignored != nil {
				fmt.Fprintf(os.Stderr, "cvmd: PID 1 ignores the words of the kernel command line the kernel passed it as arguments: %q\n", ignored)
			}
			return exit(supervisor.Main(nil))
		}
	}
	if len(args) < 2 {
		usage()
		return 2
	}
	switch name := args[1]; name {
	case "help", "-h", "--help":
		usage()
		return 0
	default:
		if c, ok := commands()[name]; ok {
			return c(args[2:])
		}
		fmt.Fprintf(os.Stderr, "cvmd: unknown command %q\n", name)
		usage()
		return 2
	}
}

// kernelWords returns PID 1's arguments when they are not a command of
// cvmd's: the kernel passes init the words of its command line that it
// does not know itself (such as nokaslr, which only its decompressor
// reads), and PID 1 must not exit on them (the kernel would panic).
// nil when args name a command (PID 1 re-executing itself) or are none.
func kernelWords(args []string, cmds map[string]command) []string {
	if len(args) < 2 {
		return nil
	}
	if _, ok := cmds[args[1]]; ok {
		return nil
	}
	return args[1:]
}

func exit(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "cvmd: %v\n", err)
		return 1
	}
	return 0
}

func usage() {
	var names []string
	for _, c := range table.Default().Children {
		names = append(names, c.Name)
	}
	fmt.Fprintf(os.Stderr, `usage: cvmd supervise [flags]   run the supervisor (what PID 1 runs with no arguments)
       cvmd supervise --help     the supervisor's flags

Internal commands, started by the supervisor only:
  %s   the children
  init   libcontainer's re-exec
`, strings.Join(names, ", "))
}
