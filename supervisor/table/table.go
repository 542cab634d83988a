// Package table is cvmd's child table: the one place that says what each
// child of the supervisor is. A ChildSpec names the child's entry point and
// settings and declares its sandbox (namespaces, state directories,
// devices, capabilities, seccomp profile, cgroup limits, extra fds), its
// dependencies, its restart scope and the role the supervisor gives it;
// the Table adds the edges between children, the restart policy and the
// timeouts. Default is the table as a Go literal.
//
// The table is policy as data: its canonical encoding (Canonical) is what
// `cvmd supervise --print-sandbox` prints, what Hash covers and what the
// supervisor measures into the vTPM, and testdata/table.golden pins it.
// Entry points and settings functions are code, covered by the binary's own
// measurement, and are not part of the encoding.
//
// The package does not start, wire or restart anything (supervisor/lifecycle
// does). It imports sandbox (profiles and limits), the children's packages
// (their entry points), children/child, and proto (their settings); the
// supervisor's packages and cmd/cvmd import it, children never do.
package table

import (
	"fmt"
	"log/slog"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/sandbox"
)

// Scope says when a child's restart counters, generation and settings
// start afresh.
type Scope string

const (
	// Always children run for the VM's whole life; their counters are reset
	// with each new computation too (a failed one gets another chance).
	// Their settings are made at every start.
	Always Scope = "always"
	// PerComputation children are restarted with a fresh generation and the
	// computation id in their config when a computation starts. Their
	// settings are made once per computation, when it starts (an error
	// refuses the computation), and kept for its restarts.
	PerComputation Scope = "per-computation"
)

// Role is what the supervisor itself uses a child for, beyond running it.
// Each role belongs to at most one child; the code asks the table which.
type Role string

const (
	// RoleLogSink: the supervisor's own events, and the manager link's
	// reading of the durable queue, go over the supervisor's edge to this
	// child (logfwd). The supervisor ends its own stream before it stops
	// the child, which stops last: everything accepted is drained into it.
	RoleLogSink Role = "log-sink"
	// RoleComputations: the supervisor starts, stops and queries
	// computations through this child's agentctl service on its edge (the
	// agent).
	RoleComputations Role = "computations"
	// RoleMeasurements: the supervisor sends measurements and evidence
	// requests to this child as control commands (attestation, which alone
	// holds the TPM).
	RoleMeasurements Role = "measurements"
	// RoleAlgorithmSandboxes: only this child may ask the supervisor for
	// algorithm sandboxes (control.SandboxRequest); they are killed when it
	// exits (the runner). The requests of any other child are refused.
	RoleAlgorithmSandboxes Role = "algorithm-sandboxes"
	// RoleAlgorithmProxy: this child receives the proxy listener made in
	// each algorithm sandbox's network namespace, as a Rewire named
	// "proxy:<sandbox id>" (egress).
	RoleAlgorithmProxy Role = "algorithm-proxy"
)

// ChildSpec declares one child: everything the supervisor decides about it.
// The JSON fields are the measured policy (Table, Canonical); the function
// fields are code (measured with the binary) and not encoded.
type ChildSpec struct {
	// Name is the subcommand (`cvmd <name>`) and the edge name.
	Name string `json:"name"`
	// Deps must be READY before this child's program runs.
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
	// control channel and edges): "listen", ingress's TCP listener.
	Fds []string `json:"fds,omitempty"`
	// Scope of the restart counters and settings.
	Scope Scope `json:"scope"`
	// HostFiles are host files bound read-only at the same path when they
	// exist (egress: /etc/resolv.conf and /etc/hosts, to resolve names).
	HostFiles []string `json:"host_files,omitempty"`
	// HostDirs are host directories bound read-only (recursively) at the
	// same path when they exist (agent and attestation: securityfs, for the
	// IMA measurement list and the TPM event log).
	HostDirs []string `json:"host_dirs,omitempty"`
	// Role is what the supervisor uses the child for; "" for none.
	Role Role `json:"role,omitempty"`
	// Standby keeps the child's next incarnation made ahead of need: a
	// second sandbox, built from this same entry (its own namespaces,
	// cgroup with these limits, seccomp profile, state directories and
	// fds, fresh edge ends the supervisor holds), whose program is started
	// and waits on its control channel for the Hello that carries its
	// config. A restart, or a new computation for a per-computation child,
	// hands the standby its config and its edges (the peers get the other
	// ends, as at every restart) instead of building a sandbox; a new
	// standby is built Table.StandbyAfter later. A standby never gets its
	// config before the child's dependencies are READY.
	Standby bool `json:"standby"`

	// Main is the child's entry point, run by `cvmd <Name>` through
	// child.Run inside the sandbox.
	Main child.Main `json:"-"`
	// Settings makes the typed settings sent in the child's ChildConfig
	// (when, see Scope). nil sends none.
	Settings func(in *SettingsInput) (proto.Message, error) `json:"-"`
	// Commands are other `cvmd <name>` entry points of the child's package,
	// for processes the child has started (the runner's wasm-run, inside an
	// algorithm sandbox); each returns the exit status.
	Commands map[string]func(args []string) int `json:"-"`
}

// SettingsInput is what a child's settings are made from.
type SettingsInput struct {
	// Attestation is the attestation mode (Table.Attestation).
	Attestation string
	// ATLS returns the agent-wire platform type aTLS evidence is made for,
	// as the attestation child last said, or why aTLS cannot be served
	// ("attestation: no platform: ..."); nil: it cannot be.
	ATLS func() (int32, error)
	// Environment returns Cocos's variables (the environment file, then
	// the kernel command line in the VM), read again at every call, and a
	// description of where they came from; nil means none.
	Environment func() (vars map[string]string, source string, err error)
	// Computation is the run request of the computation being started; nil
	// at boot and for children of scope Always.
	Computation *cvms.ComputationRunReq
	// LogQueueBytes and AgentMinFreeBytes size logfwd's queue bound and
	// the agent's free-space floor by the state directory's storage
	// (pid1.BudgetFor); 0 leaves the children's defaults.
	LogQueueBytes, AgentMinFreeBytes int64
	// PullGrant returns the active computation's pull grant (client →
	// host:port entries) as the supervisor last set it, so that a restarted
	// egress keeps it; nil means none.
	PullGrant func() map[string][]string
	// Log receives what the settings functions have to say (a refused
	// allowlist, ...); nil discards it.
	Log *slog.Logger
}

func (in *SettingsInput) log() *slog.Logger {
	if in.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return in.Log
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
	// ReadyTimeout is how long a child has to say READY (--ready-timeout
	// replaces it, and the measured table shows the value in force).
	ReadyTimeout time.Duration `json:"ready_timeout"`
	// StopGrace is how long a child has to exit after Stop / SIGTERM.
	StopGrace time.Duration `json:"stop_grace"`
	// StandbyAfter is how long a child with a standby (ChildSpec.Standby)
	// must have been READY, once every child was READY (the boot is over),
	// before its standby is built, one at a time: a child that fails at
	// once does not cost a build per failure, and a build does not compete
	// with the starts it would speed up. Zero builds none.
	StandbyAfter time.Duration `json:"standby_after"`
	// Attestation is the attestation child's mode (children/attestation:
	// "auto", "simulated", or the platform it forces); the supervisor sets
	// it from --attestation, the kernel command line or the environment
	// file (AttestationVar), so the measured table shows the mode in force.
	Attestation string `json:"attestation"`
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

// WithRole returns the name of the child that has role r, or "".
func (t *Table) WithRole(r Role) string {
	for _, c := range t.Children {
		if c.Role == r {
			return c.Name
		}
	}
	return ""
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

// StateDirs returns every --state subdirectory some child sees, once each,
// in table order.
func (t *Table) StateDirs() []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range t.Children {
		for _, d := range c.StateDirs {
			if !seen[d.Dir] {
				seen[d.Dir] = true
				out = append(out, d.Dir)
			}
		}
	}
	return out
}

// Validate checks that names are unique, deps and edges name known children
// and deps come earlier in the table (so the order is a valid start order),
// that each role has one child, and that the durations and the policy make
// sense.
func (t *Table) Validate() error {
	seen := map[string]bool{}
	roles := map[Role]string{}
	for _, c := range t.Children {
		if c.Name == "" || c.Name == SupervisorName || seen[c.Name] {
			return fmt.Errorf("table: child name %q empty, reserved or duplicate", c.Name)
		}
		for _, d := range c.Deps {
			if !seen[d] {
				return fmt.Errorf("table: %s depends on %q, which is not an earlier child", c.Name, d)
			}
		}
		if c.Seccomp == nil {
			return fmt.Errorf("table: %s has no seccomp profile", c.Name)
		}
		if c.Scope != Always && c.Scope != PerComputation {
			return fmt.Errorf("table: %s has scope %q, want %q or %q", c.Name, c.Scope, Always, PerComputation)
		}
		if c.Role != "" {
			if other, dup := roles[c.Role]; dup {
				return fmt.Errorf("table: role %q given to both %s and %s", c.Role, other, c.Name)
			}
			roles[c.Role] = c.Name
		}
		seen[c.Name] = true
	}
	pairs := map[Edge]bool{}
	for _, e := range t.Edges {
		if (!seen[e.Client] && e.Client != SupervisorName) || !seen[e.Server] || e.Client == e.Server || pairs[e] {
			return fmt.Errorf("table: edge %s→%s: unknown, self or duplicate", e.Client, e.Server)
		}
		pairs[e] = true
	}
	if t.ReadyTimeout <= 0 || t.StopGrace <= 0 {
		return fmt.Errorf("table: ready timeout %v and stop grace %v must be positive", t.ReadyTimeout, t.StopGrace)
	}
	if t.StandbyAfter < 0 {
		return fmt.Errorf("table: standby after %v: want ≥ 0", t.StandbyAfter)
	}
	return t.Policy.Validate()
}

// Depth is the number of children on the longest dependency chain: how
// many steps an orderly shutdown takes, each stopping the children no
// running child depends on.
func (t *Table) Depth() int {
	depth := map[string]int{}
	most := 0
	for _, c := range t.Children { // deps come earlier (Validate)
		d := 1
		for _, dep := range c.Deps {
			d = max(d, depth[dep]+1)
		}
		depth[c.Name] = d
		most = max(most, d)
	}
	return most
}

// Dependents returns the names of children that depend on name, transitively.
func (t *Table) Dependents(name string) []string {
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
