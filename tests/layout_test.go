package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/cvmd/cvmd/"

type pkg struct {
	ImportPath string
	Dir        string
	Doc        string
	Imports    []string
	Deps       []string
	Name       string
	GoFiles    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-tags", "seccomp", "-json", "github.com/cvmd/cvmd/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// under reports whether rel is pkg or inside it ("supervisor" is the root
// package alone; "supervisor/..." is the whole tree).
func under(rel, pkg string) bool {
	if tree, ok := strings.CutSuffix(pkg, "/..."); ok {
		return rel == tree || strings.HasPrefix(rel, tree+"/")
	}
	return rel == pkg
}

// forbidden lists, per package prefix, the module packages it must not
// depend on (directly or not). This is DESIGN.md's layout as a rule.
var forbidden = []struct {
	from    string
	notDeps []string
	why     string
}{
	{"children/", []string{"supervisor/...", "sandbox/..."}, "children receive fds and a config, nothing else"},
	{"ipc", []string{"supervisor/...", "sandbox/...", "children/...", "attest/..."}, "ipc is a leaf"},
	{"sandbox", []string{"supervisor/...", "children/...", "attest/..."}, "sandbox is a leaf"},
	{"attest", []string{"supervisor/...", "sandbox/...", "children/..."}, "attest is a leaf"},
	{"internal/logsink", []string{"supervisor/...", "sandbox/...", "children/..."}, "the log client is shared by everyone"},
	{"pull", []string{"supervisor/...", "sandbox/...", "children/..."}, "pull mode is a library of the agent (the supervisor uses its grant)"},
}

// supervisorImports is, for each package of supervisor/, every module
// package it may import directly (each package's doc says the same). The
// root composes the parts; the parts do not know each other, except that
// the lifecycle loop runs the table.
var supervisorImports = map[string][]string{
	"supervisor": {"cocos/manifest", "ipc", "proto/...", "pull", "sandbox", "supervisor/algosandbox", "supervisor/lifecycle",
		"supervisor/manager", "supervisor/measure", "supervisor/pid1", "supervisor/table"},
	"supervisor/table":       {"children/...", "proto/...", "sandbox"},
	"supervisor/lifecycle":   {"internal/lines", "internal/logsink", "ipc", "proto/...", "sandbox", "supervisor/table"},
	"supervisor/algosandbox": {"proto/...", "sandbox"},
	"supervisor/measure":     {"attest", "cocos/manifest", "proto/..."},
	"supervisor/manager":     {"internal/logsink", "ipc", "proto/..."},
	"supervisor/pid1":        {},
	"supervisor/probe":       {"ipc", "proto/...", "sandbox"},
	// Links the lifecycle tests' binary statically (cgo flags only).
	"supervisor/lifecycle/internal/staticlink": {},
}

// importers is, for packages only some may import, who may (tests and
// tests/ aside).
var importers = map[string][]string{
	"supervisor":             {"cmd/cvmd"},
	"supervisor/probe":       {"cmd/cvmd"},
	"supervisor/lifecycle":   {"supervisor"},
	"supervisor/algosandbox": {"supervisor"},
	"supervisor/measure":     {"supervisor"},
	"supervisor/manager":     {"supervisor"},
	"supervisor/table":       {"supervisor/...", "cmd/cvmd"},
	"supervisor/pid1":        {"supervisor", "images/..."},
	// Tests only: no package imports it.
	"supervisor/lifecycle/internal/staticlink": {},
}

func anyUnder(rel string, pkgs []string) bool {
	for _, p := range pkgs {
		if under(rel, p) {
			return true
		}
	}
	return false
}

func TestImportRules(t *testing.T) {
	pkgs := listPackages(t)
	for _, p := range pkgs {
		rel := strings.TrimPrefix(p.ImportPath, module)
		for _, rule := range forbidden {
			if !strings.HasPrefix(rel, rule.from) || rel == "pull/pulltest" {
				continue // pulltest is test code: it serves the real egress proxy
			}
			for _, d := range p.Deps {
				drel := strings.TrimPrefix(d, module)
				if drel == d {
					continue // not ours
				}
				if anyUnder(drel, rule.notDeps) {
					t.Errorf("%s depends on %s: %s", rel, drel, rule.why)
				}
			}
		}
		for _, d := range p.Deps {
			if d == module+"internal/testutil" {
				t.Errorf("%s depends on internal/testutil: it is for tests only", rel)
			}
		}
		if allowed, ok := supervisorImports[rel]; ok {
			for _, d := range p.Imports {
				if drel := strings.TrimPrefix(d, module); drel != d && !anyUnder(drel, allowed) {
					t.Errorf("%s imports %s: it may import only %v", rel, drel, allowed)
				}
			}
		} else if strings.HasPrefix(rel, "supervisor/") {
			t.Errorf("%s is not in the layout test's supervisorImports: say what it may import", rel)
		}
		for _, d := range p.Imports {
			drel := strings.TrimPrefix(d, module)
			if who, ok := importers[drel]; ok && !anyUnder(rel, who) && !strings.HasPrefix(rel, "tests/") {
				t.Errorf("%s imports %s, which only %v may import", rel, drel, who)
			}
		}
		// A child never imports another child; the shared runtime is children/child.
		if strings.HasPrefix(rel, "children/") {
			self := strings.SplitN(strings.TrimPrefix(rel, "children/"), "/", 2)[0]
			for _, d := range p.Imports {
				drel := strings.TrimPrefix(d, module)
				if strings.HasPrefix(drel, "children/") {
					other := strings.SplitN(strings.TrimPrefix(drel, "children/"), "/", 2)[0]
					if other != self && other != "child" {
						t.Errorf("%s imports %s: children never import each other", rel, drel)
					}
				}
			}
		}
	}
}

// The supervisor has no package-level registries filled from init
// functions: what runs is what supervisor.runProper builds.
func TestSupervisorHasNoInitRegistries(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(p.ImportPath, module)
		if !under(rel, "supervisor/...") {
			continue
		}
		for _, f := range p.GoFiles {
			b, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "\nfunc init()") {
				t.Errorf("%s/%s has an init function", rel, f)
			}
		}
	}
}

func TestEveryPackageHasADoc(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Name == "main" || len(p.GoFiles) == 0 || strings.HasPrefix(p.ImportPath, module+"proto/") {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment (style rule 20)", p.ImportPath)
		}
	}
}
