package table

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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

func TestATLSPlatformSimulated(t *testing.T) {
	if p := atlsPlatform(true); p != 2 {
		t.Fatalf("simulated attestation: platform %d, want 2 (SNP+vTPM)", p)
	}
}
