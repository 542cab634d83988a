package table

import (
	"fmt"
	"os"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
)

// ingressSettings: the ingress runs with the TLS mode of the current
// computation's AgentConfig (Cocos §1.3), translated into IngressSettings
// when the computation starts (the ingress, a per-computation child, is then
// restarted with them); before the first computation it serves plaintext.
func ingressSettings(in *SettingsInput) (proto.Message, error) {
	if in.Computation == nil {
		return &config.IngressSettings{}, nil
	}
	return ingressFromAgentConfig(in.Computation.GetAgentConfig(), atlsPlatform(in.SimulatedAttestation))
}

// isPEMPath is Cocos's rule for the certificate fields of AgentConfig: a
// value shorter than 1000 characters without a newline names a file,
// anything else is PEM data.
func isPEMPath(v string) bool { return len(v) < 1000 && !strings.Contains(v, "\n") }

// ingressFromAgentConfig fills IngressSettings 1–6 from ac. Files named by path
// are read here, by the supervisor, and passed inline: the ingress's
// sandbox sees no file system of the VM. platform is the agent-wire
// platform type for aTLS evidence.
func ingressFromAgentConfig(ac *cvms.AgentConfig, platform int32) (*config.IngressSettings, error) {
	s := &config.IngressSettings{AttestedTls: ac.GetAttestedTls(), PlatformType: platform}
	for _, f := range []struct {
		name string
		v    string
		dst  *string
	}{
		{"cert_file", ac.GetCertFile(), &s.CertFile},
		{"key_file", ac.GetKeyFile(), &s.KeyFile},
		{"client_ca_file", ac.GetClientCaFile(), &s.ClientCaFile},
		{"server_ca_file", ac.GetServerCaFile(), &s.ServerCaFile},
	} {
		if f.v == "" || !isPEMPath(f.v) {
			*f.dst = f.v
			continue
		}
		b, err := os.ReadFile(f.v)
		if err != nil {
			return nil, fmt.Errorf("agent_config.%s: %w", f.name, err)
		}
		pem := string(b)
		if isPEMPath(pem) {
			// Not PEM (the ingress will say so); keep it inline all the same.
			pem += "\n"
		}
		*f.dst = pem
	}
	return s, nil
}

// atlsPlatform is the agent-wire platform type the ingress asks the
// attestation child for: SNP+vTPM (2) when the attestation is simulated
// with SNP or the VM has both, vTPM (1) with a TPM only, SNP (0) with SNP
// only.
func atlsPlatform(simulated bool) int32 {
	if simulated {
		return 2 // the simulated attestation child simulates SNP over the TPM simulator
	}
	snp, tpm := exists("/dev/sev-guest"), exists("/dev/tpmrm0")
	switch {
	case snp && tpm:
		return 2
	case snp:
		return 0
	default:
		return 1
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
