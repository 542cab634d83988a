// Package wasmrun is `cvmd wasm-run`, the WebAssembly runtime of `wasm`
// algorithms. It runs INSIDE the algorithm sandbox (the runner mounts the
// cvmd binary there and makes it the sandbox's process), so the module gets
// no more than any other algorithm: wazero (pure Go) adds WASI on top, with
// only the directories given by --dir preopened, read-only when marked ":ro".
//
// It is not a child: it has no control channel and talks to nobody. It does
// not log; errors go to stderr, the module's exit code is the process's.
// Only cmd/cvmd imports it.
package wasmrun

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// maxModule bounds the module read into memory.
const maxModule = 512 << 20

// ExitError carries the module's own exit code.
type ExitError struct{ Code uint32 }

func (e *ExitError) Error() string {
	return fmt.Sprintf("wasm-run: module exited with code %d", e.Code)
}

type dirs []string

func (d *dirs) String() string     { return strings.Join(*d, ",") }
func (d *dirs) Set(v string) error { *d = append(*d, v); return nil }

// Main runs `cvmd wasm-run [--dir path[:ro]]... [--cwd dir] module.wasm [-- args...]`.
// Each --dir is preopened at the same path in the guest.
func Main(args []string) error {
	fs := flag.NewFlagSet("wasm-run", flag.ContinueOnError)
	var ds dirs
	fs.Var(&ds, "dir", "directory to preopen at the same guest path; suffix :ro for read-only (repeatable)")
	cwd := fs.String("cwd", "/", "guest working directory (PWD)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() < 1 {
		return errors.New("wasm-run: no module given")
	}
	module := fs.Arg(0)
	guestArgs := fs.Args()[1:]
	if len(guestArgs) > 0 && guestArgs[0] == "--" {
		guestArgs = guestArgs[1:]
	}
	f, err := os.Open(module)
	if err != nil {
		return fmt.Errorf("wasm-run: %w", err)
	}
	code, err := io.ReadAll(io.LimitReader(f, maxModule+1))
	f.Close()
	if err != nil {
		return fmt.Errorf("wasm-run: reading %s: %w", module, err)
	}
	if len(code) > maxModule {
		return fmt.Errorf("wasm-run: %s larger than %d bytes", module, maxModule)
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	fsc := wazero.NewFSConfig()
	for _, d := range ds {
		p, ro := strings.CutSuffix(d, ":ro")
		if _, err := os.Stat(p); err != nil {
			continue // e.g. no datasets: nothing to preopen
		}
		if ro {
			fsc = fsc.WithReadOnlyDirMount(p, p)
		} else {
			fsc = fsc.WithDirMount(p, p)
		}
	}
	mc := wazero.NewModuleConfig().
		WithArgs(append([]string{"algorithm"}, guestArgs...)...).
		WithEnv("PWD", *cwd).
		WithStdout(os.Stdout).WithStderr(os.Stderr).WithStdin(os.Stdin).
		WithFSConfig(fsc).
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().
		WithRandSource(rand.Reader)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "PWD" {
			mc = mc.WithEnv(k, v)
		}
	}
	mod, err := rt.InstantiateWithConfig(ctx, code, mc)
	if mod != nil {
		mod.Close(ctx)
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		if exit.ExitCode() == 0 {
			return nil
		}
		return &ExitError{Code: exit.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("wasm-run: %w", err)
	}
	return nil
}

// Command is Main as a process: it prints an error to stderr and returns
// the exit status (the module's own code when it exited by itself).
func Command(args []string) int {
	err := Main(args)
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return int(ee.Code)
	default:
		fmt.Fprintln(os.Stderr, err)
		return 125
	}
}
