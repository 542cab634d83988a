package table

import (
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/config"
)

// The settings of each child, as its ChildSpec.Settings. Those that need
// more than a literal are in ingress.go and egress.go.

func logfwdSettings(*SettingsInput) (proto.Message, error) { return &config.LogfwdSettings{}, nil }

func runnerSettings(*SettingsInput) (proto.Message, error) { return &config.RunnerSettings{}, nil }

// agentSettings: the agent's default computation dir (<state_dir>/computation)
// is inside its own state dir, which the runner cannot see: use the shared one.
// Pull mode's settings come from the environment, read each time the agent
// starts.
func agentSettings(in *SettingsInput) (proto.Message, error) {
	return &config.AgentSettings{ComputationDir: ViewState + "/computation", Pull: PullSettings(in)}, nil
}

func attestationSettings(in *SettingsInput) (proto.Message, error) {
	m := &config.AttestationSettings{}
	if in.SimulatedAttestation {
		m.Mode = config.AttestationSettings_SIMULATED
		m.SimulateSnp = true
	}
	return m, nil
}
