package table

import (
	"bytes"
	"flag"
	"math"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/table.golden")

// TestTableGolden makes every change to the measured sandbox policy visible
// in review: the canonical encoding must match testdata/table.golden.
func TestTableGolden(t *testing.T) {
	b, err := Default().Canonical()
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile("testdata/table.golden", b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/table.golden")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("the child table changed (run go test ./supervisor/table -run TestTableGolden -update and review the diff):\n got %s\nwant %s", b, want)
	}
	if a, b := Default().HashHex(), Default().HashHex(); a != b {
		t.Fatal("hash not stable")
	}
}

func TestDefaultTable(t *testing.T) {
	tab := Default()
	if err := tab.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range tab.Children {
		if len(c.Caps) != 0 {
			t.Errorf("%s has capabilities %v", c.Name, c.Caps)
		}
		if c.HostNet != (c.Name == "egress") {
			t.Errorf("%s: host network %v", c.Name, c.HostNet)
		}
		socket := len(c.Seccomp.SocketFamilies) > 0
		if socket != (c.Name == "egress") {
			t.Errorf("%s: socket(2) allowed = %v", c.Name, socket)
		}
		if _, ok := tab.EdgesOf(c.Name)["to:logfwd"]; !ok && c.Name != "logfwd" {
			t.Errorf("%s has no edge to logfwd", c.Name)
		}
	}
	want := []string{"from:attestation", "from:ingress", "from:runner", "from:egress", "from:agent", "from:supervisor"}
	got := tab.EdgesOf("logfwd")
	for _, w := range want {
		if _, ok := got[w]; !ok {
			t.Errorf("logfwd lacks %s", w)
		}
	}
	agent := tab.EdgesOf("agent")
	for _, w := range []string{"from:ingress", "from:supervisor", "to:attestation", "to:runner", "to:egress", "to:logfwd"} {
		if _, ok := agent[w]; !ok {
			t.Errorf("agent lacks %s", w)
		}
	}
}

func TestTableValidateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Table)
		want string
	}{
		{"duplicate child", func(t *Table) { t.Children = append(t.Children, t.Children[0]) }, "duplicate"},
		{"dependency later in the table", func(t *Table) { t.Children[0].Deps = []string{"agent"} }, "not an earlier child"},
		{"edge to nobody", func(t *Table) { t.Edges = append(t.Edges, Edge{"agent", "nobody"}) }, "edge"},
		{"no seccomp", func(t *Table) { t.Children[1].Seccomp = nil }, "seccomp"},
		{"reserved name", func(t *Table) { t.Children[0].Name = SupervisorName }, "reserved"},
		// NaN cannot be encoded: a table that validated could then not be
		// measured (Run measured empty bytes, Hash panicked).
		{"jitter not a number", func(t *Table) { t.Policy.Jitter = math.NaN() }, "jitter"},
		{"one role for two children", func(t *Table) { t.Children[1].Role = t.Children[0].Role }, "role"},
		{"unknown scope", func(t *Table) { t.Children[2].Scope = "sometimes" }, "scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := Default()
			tc.mod(tab)
			if err := tab.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDepth(t *testing.T) {
	// ingress → agent → runner (or attestation, egress) → logfwd
	if d := Default().Depth(); d != 4 {
		t.Errorf("default table depth %d, want 4", d)
	}
	flat := &Table{Children: []ChildSpec{{Name: "a"}, {Name: "b"}}}
	if d := flat.Depth(); d != 1 {
		t.Errorf("two independent children: depth %d, want 1", d)
	}
}
