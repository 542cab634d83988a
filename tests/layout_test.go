package tests

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/cvmd/cvmd/"

type pkg struct {
	ImportPath string
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

// forbidden lists, per package prefix, the module packages it must not
// depend on (directly or not). This is DESIGN.md's layout as a rule.
var forbidden = []struct {
	from    string
	notDeps []string
	why     string
}{
	{"children/", []string{"supervisor", "sandbox"}, "children receive fds and a config, nothing else"},
	{"ipc", []string{"supervisor", "sandbox", "children", "attest"}, "ipc is a leaf"},
	{"sandbox", []string{"supervisor", "children", "attest"}, "sandbox is a leaf"},
	{"attest", []string{"supervisor", "sandbox", "children"}, "attest is a leaf"},
	{"internal/logsink", []string{"supervisor", "sandbox", "children"}, "the log client is shared by everyone"},
	{"pull", []string{"supervisor", "sandbox", "children"}, "pull mode is a library of the agent (the supervisor uses its grant)"},
}

func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
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
				for _, bad := range rule.notDeps {
					if drel == bad || strings.HasPrefix(drel, bad+"/") {
						t.Errorf("%s depends on %s: %s", rel, drel, rule.why)
					}
				}
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
