package supervisor

import (
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/config"
)

// settings returns the typed settings sent to a child in its ChildConfig.
// Each child's issue adds what its child needs here (one case each).
func (s *Supervisor) settings(name string) proto.Message {
	switch name {
	case "agent":
		// The agent's default (<state_dir>/computation) is inside its own
		// state dir, which the runner cannot see: use the shared one.
		return &config.AgentSettings{ComputationDir: ViewState + "/computation", MinFreeBytes: uint64(s.budget().AgentMinFreeBytes)}
	case "runner":
		return &config.RunnerSettings{}
	case "attestation":
		m := &config.AttestationSettings{}
		if s.cfg.SimulatedAttestation {
			m.Mode = config.AttestationSettings_SIMULATED
			m.SimulateSnp = true
		}
		return m
	case "ingress":
		if s.ingress != nil {
			return s.ingress
		}
		return &config.IngressSettings{}
	case "egress":
		return &config.EgressSettings{Allow: s.egressAllowlist()}
	case "logfwd":
		return &config.LogfwdSettings{MaxBytes: uint64(s.budget().LogQueueBytes)}
	}
	return &config.AgentSettings{} // unreachable for a validated table
}
