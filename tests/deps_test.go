package tests

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestCvmdDependencies pins the non-standard-library packages linked into
// the measured guest binary (style rule 25): a new dependency of cvmd is a
// visible diff in testdata/cvmd-deps.txt. Rewrite with
// `go test ./tests -run TestCvmdDependencies -update`.
func TestCvmdDependencies(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-tags", "seccomp netgo osusergo grpcnotrace",
		"-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/cvmd")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []string
	for _, p := range strings.Split(string(out), "\n") {
		if p != "" {
			pkgs = append(pkgs, p)
		}
	}
	got := strings.Join(pkgs, "\n") + "\n"
	golden := filepath.Join("testdata", "cvmd-deps.txt")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (create it with -update)", err)
	}
	if got != string(want) {
		wantSet := map[string]bool{}
		for _, p := range strings.Fields(string(want)) {
			wantSet[p] = true
		}
		for _, p := range pkgs {
			if !wantSet[p] {
				t.Errorf("new dependency of cvmd: %s", p)
			}
			delete(wantSet, p)
		}
		for p := range wantSet {
			t.Errorf("dependency no longer linked into cvmd: %s", p)
		}
		t.Log("review the change, then: go test ./tests -run TestCvmdDependencies -update")
	}
}
