package table

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
)

const testPEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"

// Paths in AgentConfig are read by the supervisor and passed inline (the
// ingress's sandbox cannot see them); inline PEM passes as is.
func TestIngressSettingsFromAgentConfig(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	os.WriteFile(cert, []byte(testPEM), 0o600)
	notPEM := filepath.Join(dir, "garbage")
	os.WriteFile(notPEM, []byte("garbage"), 0o600)
	tests := []struct {
		name    string
		ac      *cvms.AgentConfig
		want    func(cert, key, clientCA, serverCA string, atls bool) bool
		wantErr string
	}{
		{"none", nil, func(c, k, cc, sc string, a bool) bool { return c == "" && k == "" && cc == "" && sc == "" && !a }, ""},
		{"paths", &cvms.AgentConfig{CertFile: cert, KeyFile: cert, ClientCaFile: cert, ServerCaFile: cert},
			func(c, k, cc, sc string, a bool) bool {
				return c == testPEM && k == testPEM && cc == testPEM && sc == testPEM
			}, ""},
		{"inline", &cvms.AgentConfig{CertFile: testPEM, AttestedTls: true},
			func(c, k, cc, sc string, a bool) bool { return c == testPEM && a }, ""},
		{"not PEM stays inline", &cvms.AgentConfig{CertFile: notPEM},
			func(c, k, cc, sc string, a bool) bool {
				return strings.Contains(c, "\n") && strings.HasPrefix(c, "garbage")
			}, ""},
		{"missing file", &cvms.AgentConfig{KeyFile: filepath.Join(dir, "nope")}, nil, "agent_config.key_file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ingressFromAgentConfig(tc.ac, 2)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want it to name %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.GetPlatformType() != 2 || !tc.want(s.GetCertFile(), s.GetKeyFile(), s.GetClientCaFile(), s.GetServerCaFile(), s.GetAttestedTls()) {
				t.Fatalf("settings %v", s)
			}
		})
	}
}

// ingressSettings refuses, when the computation starts, what the ingress
// could not serve, naming the field: aTLS without a platform, and an
// AgentConfig the ingress itself refuses.
func TestIngressSettingsRefusals(t *testing.T) {
	noPlatform := func() (int32, error) { return 0, errors.New("attestation: no platform: no TPM at /dev/tpmrm0") }
	vtpm := func() (int32, error) { return 1, nil }
	tests := []struct {
		name     string
		ac       *cvms.AgentConfig
		atls     func() (int32, error)
		wantErr  []string // every piece the error must name; nil: accepted
		platform int32
	}{
		{"plaintext needs no platform", nil, noPlatform, nil, 0},
		{"aTLS on a VM without a platform", &cvms.AgentConfig{AttestedTls: true}, noPlatform,
			[]string{"agent_config.attested_tls", "no platform: no TPM at /dev/tpmrm0"}, 0},
		{"aTLS without an attestation child", &cvms.AgentConfig{AttestedTls: true}, nil,
			[]string{"agent_config.attested_tls", "no attestation child"}, 0},
		{"aTLS with the child's platform", &cvms.AgentConfig{AttestedTls: true}, vtpm, nil, 1},
		{"key without certificate", &cvms.AgentConfig{KeyFile: testPEM}, vtpm,
			[]string{"agent_config", "cert_file and key_file must be given together"}, 0},
		{"certificate that is not one", &cvms.AgentConfig{CertFile: testPEM, KeyFile: testPEM}, vtpm,
			[]string{"agent_config", "cert_file and key_file"}, 0},
		{"client CA without TLS", &cvms.AgentConfig{ClientCaFile: testPEM}, vtpm,
			[]string{"agent_config", "client_ca"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := &SettingsInput{ATLS: tc.atls, Computation: &cvms.ComputationRunReq{Id: "c1", AgentConfig: tc.ac}}
			m, err := ingressSettings(in)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("accepted %v, want a refusal naming %q", m, tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("error %q does not name %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p := m.(*config.IngressSettings).GetPlatformType(); p != tc.platform {
				t.Fatalf("platform_type %d, want %d", p, tc.platform)
			}
		})
	}
}
