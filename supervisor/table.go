package supervisor

import (
	"fmt"
	"sort"
	"time"

	"github.com/cvmd/cvmd/sandbox"
)

// Scope says when a child's restart counters and state start afresh.
type Scope string

const (
	// Always children run for the VM's whole life; their counters are reset
	// with each new computation too (a failed one gets another chance).
	Always Scope = "always"
	// PerComputation children are restarted with a fresh generation and the
	// computation id in their config when a computation starts.
	PerComputation Scope = "per-computation"
)

// ChildSpec declares one child: everything the supervisor decides about it.
// The table of ChildSpecs is the measured policy (Table, Hash).
type ChildSpec struct {
	// Name is the subcommand (`cvmd <name>`) and the edge name.
	Name string `json:"name"`
	// Deps must be READY before this child starts.
	Deps []string `json:"deps"`
	// HostNet gives the child the supervisor's network namespace; otherwise
	// it gets an empty one (loopback only).
	HostNet bool `json:"host_net"`
	// StateDirs are directories under --state bound into the view at
	// /state/<dir>; the first writable one is the child's state_dir.
	StateDirs []StateDir `json:"state_dirs"`
	// Devices are host device nodes made available when they exist (a
	// missing one is skipped, so one table serves the VM and a workstation).
	Devices []string `json:"devices,omitempty"`
	// Caps is the capability set; most children have none.
	Caps []string `json:"caps"`
	// Seccomp is the syscall profile.
	Seccomp *sandbox.Profile `json:"seccomp"`
	// Limits are the cgroup limits.
	Limits sandbox.Limits `json:"limits"`
	// TmpBytes sizes the private /tmp tmpfs.
	TmpBytes int64 `json:"tmp_bytes"`
	// Fds are extra fds the supervisor makes for the child (besides its
	// control channel and edges), e.g. "listen".
	Fds []string `json:"fds,omitempty"`
	// Scope of the restart counters.
	Scope Scope `json:"scope"`
	// HostFiles are host files bound read-only at the same path when they
	// exist (egress: /etc/resolv.conf and /etc/hosts, to resolve names).
	HostFiles []string `json:"host_files,omitempty"`
}

// StateDir is one directory of --state in a child's view.
type StateDir struct {
	Dir      string `json:"dir"`
	Writable bool   `json:"writable"`
}

// Edge is a connection route: Client dials Server. The client's fd is
// "to:<server>", the server's "from:<client>".
type Edge struct {
	Client string `json:"client"`
	Server string `json:"server"`
}

// SupervisorName is the client name of the supervisor on its own edges.
const SupervisorName = "supervisor"

// ViewState is where --state subdirectories appear inside a child's view.
const ViewState = "/state"

// Table is the child table. Order is the start order (dependencies first);
// Validate checks that it is consistent.
type Table struct {
	Children []ChildSpec `json:"children"`
	Edges    []Edge      `json:"edges"`
	Policy   Policy      `json:"restart_policy"`
	// ReadyTimeout is how long a child has to say READY.
	ReadyTimeout time.Duration `json:"ready_timeout"`
	// StopGrace is how long a child has to exit after Stop / SIGTERM.
	StopGrace time.Duration `json:"stop_grace"`
}

// DefaultTable is cvmd's child table. Every child but egress has an empty
// network namespace; only egress may call socket(2); nobody has a
// capability; each sees only its own state directories, read-only where it
// only reads.
func DefaultTable() *Table {
	fdOnly := sandbox.FDOnlyProfile()
	child := func(name string, deps []string, dirs []StateDir, mem int64, pids int64, scope Scope) ChildSpec {
		return ChildSpec{Name: name, Deps: deps, StateDirs: dirs, Caps: []string{}, Seccomp: fdOnly,
			Limits: sandbox.Limits{MemoryBytes: mem, Pids: pids, CPUMillis: 2000}, TmpBytes: 16 << 20, Scope: scope}
	}
	rw := func(d string) StateDir { return StateDir{Dir: d, Writable: true} }
	ro := func(d string) StateDir { return StateDir{Dir: d} }
	logfwd := child("logfwd", nil, []StateDir{rw("logfwd")}, 128<<20, 64, Always)
	attestation := child("attestation", []string{"logfwd"}, []StateDir{rw("attestation")}, 128<<20, 64, Always)
	attestation.Devices = []string{"/dev/tpmrm0", "/dev/sev-guest"}
	egress := child("egress", []string{"logfwd"}, nil, 128<<20, 128, Always)
	egress.HostNet = true
	egress.Seccomp = sandbox.NetworkProfile()
	egress.HostFiles = []string{"/etc/resolv.conf", "/etc/hosts"}
	runner := child("runner", []string{"logfwd"}, []StateDir{rw("runner"), ro("computation")}, 512<<20, 128, PerComputation)
	agent := child("agent", []string{"logfwd", "attestation", "runner", "egress"}, []StateDir{rw("agent"), rw("computation")}, 256<<20, 64, Always)
	// Per computation: restarted with the TLS mode of each computation's AgentConfig.
	ingress := child("ingress", []string{"agent", "attestation", "logfwd"}, nil, 256<<20, 64, PerComputation)
	ingress.Fds = []string{"listen"}
	t := &Table{
		Children: []ChildSpec{logfwd, attestation, egress, runner, agent, ingress},
		Edges: []Edge{
			{"ingress", "agent"}, {"ingress", "attestation"},
			{"agent", "attestation"}, {"agent", "runner"}, {"agent", "egress"},
			{SupervisorName, "agent"}, {SupervisorName, "logfwd"},
		},
		Policy:       DefaultPolicy(),
		ReadyTimeout: 10 * time.Second,
		StopGrace:    2 * time.Second,
	}
	for _, c := range t.Children {
		if c.Name != "logfwd" {
			t.Edges = append(t.Edges, Edge{c.Name, "logfwd"})
		}
	}
	return t
}

// Child returns the spec of the named child, or nil.
func (t *Table) Child(name string) *ChildSpec {
	for i := range t.Children {
		if t.Children[i].Name == name {
			return &t.Children[i]
		}
	}
	return nil
}

// EdgesOf returns the edges that child is part of, with the fd name on the
// child's side: "to:<server>" or "from:<client>".
func (t *Table) EdgesOf(name string) map[string]Edge {
	m := map[string]Edge{}
	for _, e := range t.Edges {
		if e.Client == name {
			m["to:"+e.Server] = e
		}
		if e.Server == name {
			m["from:"+e.Client] = e
		}
	}
	return m
}

// Validate checks that names are unique, deps and edges name known children
// and deps come earlier in the table (so the order is a valid start order).
func (t *Table) Validate() error {
	seen := map[string]bool{}
	for _, c := range t.Children {
		if c.Name == "" || c.Name == SupervisorName || seen[c.Name] {
			return fmt.Errorf("supervisor: table: child name %q empty, reserved or duplicate", c.Name)
		}
		for _, d := range c.Deps {
			if !seen[d] {
				return fmt.Errorf("supervisor: table: %s depends on %q, which is not an earlier child", c.Name, d)
			}
		}
		if c.Seccomp == nil {
			return fmt.Errorf("supervisor: table: %s has no seccomp profile", c.Name)
		}
		seen[c.Name] = true
	}
	pairs := map[Edge]bool{}
	for _, e := range t.Edges {
		if (!seen[e.Client] && e.Client != SupervisorName) || !seen[e.Server] || e.Client == e.Server || pairs[e] {
			return fmt.Errorf("supervisor: table: edge %s→%s: unknown, self or duplicate", e.Client, e.Server)
		}
		pairs[e] = true
	}
	if t.ReadyTimeout <= 0 || t.StopGrace <= 0 {
		return fmt.Errorf("supervisor: table: ready timeout %v and stop grace %v must be positive", t.ReadyTimeout, t.StopGrace)
	}
	return t.Policy.Validate()
}

// dependents returns the names of children that depend on name, transitively.
func (t *Table) dependents(name string) []string {
	out := map[string]bool{}
	var walk func(n string)
	walk = func(n string) {
		for _, c := range t.Children {
			for _, d := range c.Deps {
				if d == n && !out[c.Name] {
					out[c.Name] = true
					walk(c.Name)
				}
			}
		}
	}
	walk(name)
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
