package table

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
)

// ingressSettings: the ingress runs with the TLS mode of the current
// computation's AgentConfig (Cocos §1.3), translated into IngressSettings
// when the computation starts (the ingress, a per-computation child, is then
// restarted with them); before the first computation it serves plaintext.
//
// A computation whose AgentConfig the ingress would refuse is refused here,
// when it starts, naming the field (the manager's RunResponse says it),
// rather than by an ingress that fails to start again and again; so is one
// asking for aTLS on a VM that has no attestation platform.
func ingressSettings(in *SettingsInput) (proto.Message, error) {
	if in.Computation == nil {
		return &config.IngressSettings{}, nil
	}
	ac := in.Computation.GetAgentConfig()
	var platform int32
	if ac.GetAttestedTls() {
		if in.ATLS == nil {
			return nil, errors.New("agent_config.attested_tls: aTLS cannot be served: no attestation child")
		}
		var err error
		if platform, err = in.ATLS(); err != nil {
			return nil, fmt.Errorf("agent_config.attested_tls: aTLS cannot be served: %w", err)
		}
	}
	s, err := ingressFromAgentConfig(ac, platform)
	if err != nil {
		return nil, err
	}
	// The ingress's own check; evidence is never asked for here.
	unused := func(context.Context, [64]byte, [32]byte) ([]byte, error) {
		return nil, errors.New("table: validation only")
	}
	if _, err := ingress.ConfigFromSettings(s, unused); err != nil {
		return nil, fmt.Errorf("agent_config: %w", err)
	}
	return s, nil
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
