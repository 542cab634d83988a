package wasmrun

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func buildGuest(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "guest.wasm")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/guest")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the guest: %v\n%s", err, b)
	}
	return out
}

// TestRun compiles the guest twice (wazero compiles a Go module in seconds
// on a loaded 2-core machine), so the cases are few and each checks much.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a wasm module")
	}
	guest := buildGuest(t)
	rw, ro := t.TempDir(), t.TempDir()
	tests := []struct {
		name     string
		args     []string
		wantCode int // -1: a runtime error, not an exit code
		check    func(t *testing.T)
	}{
		{"writes into a writable dir", []string{"--dir", rw, guest, "--", "write", rw + "/out"}, 0, func(t *testing.T) {
			if b, err := os.ReadFile(filepath.Join(rw, "out")); err != nil || string(b) != "hello" {
				t.Errorf("out: %q %v", b, err)
			}
		}},
		// The guest exits 4 when its write fails: the exit code passes through.
		{"cannot write into a read-only dir", []string{"--dir", ro + ":ro", guest, "--", "write", ro + "/out"}, 4, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(ro, "out")); err == nil {
				t.Error("wrote into the read-only dir")
			}
		}},
		{"missing module", []string{filepath.Join(rw, "nope.wasm")}, -1, nil},
		{"not a module", []string{"--dir", rw, "/proc/self/exe"}, -1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Main(tc.args)
			var ee *ExitError
			switch {
			case tc.wantCode == 0 && err != nil:
				t.Fatalf("err = %v", err)
			case tc.wantCode > 0 && (!errors.As(err, &ee) || int(ee.Code) != tc.wantCode):
				t.Fatalf("err = %v, want exit code %d", err, tc.wantCode)
			case tc.wantCode < 0 && (err == nil || errors.As(err, &ee)):
				t.Fatalf("err = %v, want a runtime error", err)
			}
			if tc.check != nil {
				tc.check(t)
			}
		})
	}
	if c := Command([]string{filepath.Join(rw, "nope.wasm")}); c != 125 {
		t.Errorf("Command exit = %d, want 125 for a runtime error", c)
	}
}
