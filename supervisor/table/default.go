package table

import (
	"time"

	"github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/children/attestation"
	"github.com/cvmd/cvmd/children/egress"
	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/children/logfwd"
	"github.com/cvmd/cvmd/children/runner"
	"github.com/cvmd/cvmd/children/runner/wasmrun"
	"github.com/cvmd/cvmd/sandbox"
)

// Default is cvmd's child table. Every child but egress has an empty
// network namespace; only egress may call socket(2); nobody has a
// capability; each sees only its own state directories, read-only where it
// only reads. The two children every computation restarts (runner,
// ingress) keep a standby, their next incarnation made ahead (a second
// after READY); the others, restarted only when they fail, do not: each
// standby costs ~3 MiB of PSS (docs/supervisor.md), the children without
// any take ~47–51 MiB, and the idle budget is 60 MiB. Adding a child is an
// entry here (and its edges) plus its package under children/.
func Default() *Table {
	fdOnly := sandbox.FDOnlyProfile()
	noCaps := []string{}
	return &Table{
		Children: []ChildSpec{
			{
				Name:      "logfwd",
				Main:      logfwd.Main,
				Settings:  logfwdSettings,
				Role:      RoleLogSink,
				StateDirs: []StateDir{{Dir: "logfwd", Writable: true}},
				Caps:      noCaps,
				Seccomp:   fdOnly,
				Limits:    sandbox.Limits{MemoryBytes: 128 << 20, Pids: 64, CPUMillis: 2000},
				TmpBytes:  16 << 20,
				Scope:     Always,
			},
			{
				Name:      "attestation",
				Main:      attestation.Main,
				Settings:  attestationSettings,
				Role:      RoleMeasurements,
				Deps:      []string{"logfwd"},
				StateDirs: []StateDir{{Dir: "attestation", Writable: true}},
				Devices:   []string{"/dev/tpmrm0", "/dev/sev-guest", "/dev/tdx_guest"},
				HostDirs:  []string{"/sys/kernel/security"},
				Caps:      noCaps,
				Seccomp:   fdOnly,
				Limits:    sandbox.Limits{MemoryBytes: 128 << 20, Pids: 64, CPUMillis: 2000},
				TmpBytes:  16 << 20,
				Scope:     Always,
			},
			{
				Name:      "egress",
				Main:      egress.Main,
				Settings:  egressSettings,
				Role:      RoleAlgorithmProxy,
				Deps:      []string{"logfwd"},
				HostNet:   true,
				HostFiles: []string{"/etc/resolv.conf", "/etc/hosts"},
				Caps:      noCaps,
				Seccomp:   sandbox.NetworkProfile(),
				Limits:    sandbox.Limits{MemoryBytes: 128 << 20, Pids: 128, CPUMillis: 2000},
				TmpBytes:  16 << 20,
				Scope:     Always,
			},
			{
				Name:      "runner",
				Main:      runner.Main,
				Settings:  runnerSettings,
				Commands:  map[string]func([]string) int{"wasm-run": wasmrun.Command},
				Role:      RoleAlgorithmSandboxes,
				Deps:      []string{"logfwd"},
				StateDirs: []StateDir{{Dir: "runner", Writable: true}, {Dir: "computation"}},
				Caps:      noCaps,
				Seccomp:   fdOnly,
				Limits:    sandbox.Limits{MemoryBytes: 512 << 20, Pids: 128, CPUMillis: 2000},
				TmpBytes:  16 << 20,
				Scope:     PerComputation,
				Standby:   true,
			},
			{
				Name:     "agent",
				Main:     agent.Main,
				Settings: agentSettings,
				Role:     RoleComputations,
				Deps:     []string{"logfwd", "attestation", "runner", "egress"},
				// Pull mode verifies HTTPS sources against the VM's roots.
				HostFiles: []string{SystemRoots},
				StateDirs: []StateDir{{Dir: "agent", Writable: true}, {Dir: "computation", Writable: true}},
				HostDirs:  []string{"/sys/kernel/security"},
				Caps:      noCaps,
				Seccomp:   fdOnly,
				Limits:    sandbox.Limits{MemoryBytes: 256 << 20, Pids: 64, CPUMillis: 2000},
				TmpBytes:  16 << 20,
				Scope:     Always,
			},
			{
				Name: "ingress",
				Main: ingress.Main,
				// Made when each computation starts, from its AgentConfig:
				// the ingress is restarted with that computation's TLS mode.
				Settings: ingressSettings,
				Deps:     []string{"agent", "attestation", "logfwd"},
				Fds:      []string{"listen"},
				Caps:     noCaps,
				Seccomp:  fdOnly,
				Limits:   sandbox.Limits{MemoryBytes: 256 << 20, Pids: 64, CPUMillis: 2000},
				TmpBytes: 16 << 20,
				Scope:    PerComputation,
				Standby:  true,
			},
		},
		Edges: []Edge{
			{"ingress", "agent"}, {"ingress", "attestation"},
			{"agent", "attestation"}, {"agent", "runner"}, {"agent", "egress"},
			{SupervisorName, "agent"}, {SupervisorName, "logfwd"},
			// Every child logs through logfwd.
			{"attestation", "logfwd"}, {"egress", "logfwd"}, {"runner", "logfwd"}, {"agent", "logfwd"}, {"ingress", "logfwd"},
		},
		Policy:       DefaultPolicy(),
		ReadyTimeout: 10 * time.Second,
		StopGrace:    2 * time.Second,
		StandbyAfter: time.Second,
		Attestation:  attestation.ModeAuto,
	}
}
