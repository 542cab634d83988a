package table

import (
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/config"
)

// The settings of each child, as its ChildSpec.Settings. Those that need
// more than a literal are in ingress.go and egress.go.

func logfwdSettings(in *SettingsInput) (proto.Message, error) {
	return &config.LogfwdSettings{MaxBytes: uint64(in.LogQueueBytes)}, nil
}

func runnerSettings(*SettingsInput) (proto.Message, error) { return &config.RunnerSettings{}, nil }

// agentSettings: the agent's default computation dir (<state_dir>/computation)
// is inside its own state dir, which the runner cannot see: use the shared one.
// Pull mode's settings come from the environment too, read each time the
// agent starts.
func agentSettings(in *SettingsInput) (proto.Message, error) {
	return &config.AgentSettings{ComputationDir: ViewState + "/computation", RequireRoleChallenge: roleChallengeRequired(in),
		MinFreeBytes: uint64(in.AgentMinFreeBytes), Pull: PullSettings(in)}, nil
}

// RoleChallengeVar in Cocos's environment (the kernel command line, which
// is measured, or the environment file) set to "required" makes the agent
// refuse role-only signatures in every computation (docs/agent.md, "Role
// signatures"); "" or "optional" leaves it to each manifest.
const RoleChallengeVar = "CVMD_ROLE_CHALLENGE"

// roleChallengeRequired reads RoleChallengeVar. An environment that cannot
// be read, or a value it does not know, requires challenges: failing
// closed costs Cocos's CLI, failing open would cost the parties.
func roleChallengeRequired(in *SettingsInput) bool {
	if in.Environment == nil {
		return false
	}
	vars, source, err := in.Environment()
	if err != nil {
		in.log().Error("environment not read: role challenges are required", "env", source, "err", err)
		return true
	}
	switch v := vars[RoleChallengeVar]; v {
	case "", "optional":
		return false
	case "required":
		in.log().Info("role challenges required by the environment", "env", source)
		return true
	default:
		in.log().Error("unknown "+RoleChallengeVar+" value: role challenges are required", "env", source, "value", v)
		return true
	}
}

func attestationSettings(in *SettingsInput) (proto.Message, error) {
	m := &config.AttestationSettings{}
	if in.SimulatedAttestation {
		m.Mode = config.AttestationSettings_SIMULATED
		m.SimulateSnp = true
	}
	return m, nil
}
