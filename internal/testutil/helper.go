package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// HelperEnv names the helper a re-executed test binary runs instead of its tests.
const HelperEnv = "CVMD_TEST_HELPER"

// Helpers maps a helper's name to its body, which returns the exit code.
type Helpers map[string]func() int

// Main is a test binary's TestMain when the binary doubles as helper
// processes (a child under the real child runtime, a logfwd with a queue):
// started by HelperCommand, it runs the named helper and exits with its code;
// otherwise it runs the tests.
func Main(m *testing.M, helpers Helpers) {
	if name := os.Getenv(HelperEnv); name != "" {
		fn, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "testutil: this test binary has no helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(fn())
	}
	os.Exit(m.Run())
}

// HelperCommand is this test binary run as the helper name, with args
// (os.Args[1:] of the helper) and the test's environment plus HelperEnv.
// Stdout and stderr go to the test's stderr unless the caller sets them.
func HelperCommand(name string, args ...string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), HelperEnv+"="+name)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd
}

// ExitCode turns a helper's error into its exit code: 0 for nil, else 1
// after printing the error on stderr.
func ExitCode(err error) int {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
