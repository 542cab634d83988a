package table

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/children/attestation"
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
// Pull mode's settings and the MAA instance come from the environment too,
// read each time the agent starts.
func agentSettings(in *SettingsInput) (proto.Message, error) {
	return &config.AgentSettings{ComputationDir: ViewState + "/computation", RequireRoleChallenge: roleChallengeRequired(in),
		MinFreeBytes: uint64(in.AgentMinFreeBytes), Pull: PullSettings(in), MaaUrl: maaURL(in)}, nil
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

// AttestationVar in Cocos's environment (the kernel command line, which
// wins, or the environment file) chooses the attestation mode, one of
// attestation.Modes; unset means auto (--attestation, if given, wins over
// both).
const AttestationVar = "CVMD_ATTESTATION"

// The attestation modes, for the supervisor's flags and environment: the
// names are children/attestation's, the one place that knows them.
const (
	AttestationAuto      = attestation.ModeAuto
	AttestationSimulated = attestation.ModeSimulated
	AttestationModes     = attestation.Modes
)

// ValidAttestation reports whether mode names an attestation mode.
func ValidAttestation(mode string) bool { return attestation.ValidMode(mode) }

// SimulatedPlatformVar in Cocos's environment chooses what a simulated
// attestation child (--attestation simulated) stands for: "snp" (the
// default: TPM simulator and SEV-SNP), "tdx", "azure-snp" or "azure-tdx"
// (the TPM simulator provisioned as an Azure CVM's vTPM). Ignored without
// simulation: hardware says what it is.
const SimulatedPlatformVar = "CVMD_SIMULATED_PLATFORM"

// attestationSettings: the mode's settings (the one place modes become
// settings is children/attestation), and in simulation the platform
// simulated.
func attestationSettings(in *SettingsInput) (proto.Message, error) {
	m := attestation.ModeSettings(in.Attestation)
	if m.GetMode() != config.AttestationSettings_SIMULATED {
		return m, nil
	}
	m.SimulateSnp = false
	platform := ""
	if in.Environment != nil {
		if vars, _, err := in.Environment(); err == nil {
			platform = vars[SimulatedPlatformVar]
		}
	}
	switch platform {
	case "", "snp":
		m.SimulateSnp = true
	case "tdx":
		m.SimulateTdx = true
	case "azure-snp", "azure-tdx":
		m.SimulateAzure = platform[len("azure-"):]
	default:
		return nil, fmt.Errorf("%s=%q: want snp, tdx, azure-snp or azure-tdx", SimulatedPlatformVar, platform)
	}
	return m, nil
}
