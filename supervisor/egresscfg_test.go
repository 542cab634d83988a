package supervisor

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestEgressAllowlistFromEnvFile(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
	}{
		{"absent", "AGENT_CVM_GRPC_URL=x\n", nil},
		{"quoted, commas and spaces", "# c\nCOCOS_EGRESS_ALLOWLIST=\"pypi.org, *.pythonhosted.org:443 10.1.0.0/16:5432\"\n",
			[]string{"pypi.org", "*.pythonhosted.org:443", "10.1.0.0/16:5432"}},
		{"export, single quotes, last wins", "export COCOS_EGRESS_ALLOWLIST='a.example'\nCOCOS_EGRESS_ALLOWLIST=127.0.0.1:8080\n", []string{"127.0.0.1:8080"}},
		{"other keys with the prefix", "COCOS_EGRESS_ALLOWLIST_X=bad\nCOCOS_EGRESS_ALLOWLIST = [::1]:80\n", []string{"[::1]:80"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "environment")
			os.WriteFile(f, []byte(tc.file), 0o600)
			s := &Supervisor{cfg: Config{EnvFile: f, Dev: true}, log: discardLog()}
			if got := s.egressAllowlist(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("allow %q, want %q", got, tc.want)
			}
		})
	}
	s := &Supervisor{cfg: Config{EnvFile: filepath.Join(t.TempDir(), "missing"), Dev: true}, log: discardLog()}
	if got := s.egressAllowlist(); got != nil {
		t.Fatalf("missing file: allow %q", got)
	}
}

func FuzzEnvVar(f *testing.F) {
	f.Add("COCOS_EGRESS_ALLOWLIST=\"a, b\"\n")
	f.Add("export COCOS_EGRESS_ALLOWLIST='\\x'\n#\n=\n")
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "env")
		os.WriteFile(p, []byte(content), 0o600)
		v, err := envVar(p, EgressAllowlistVar)
		if err != nil {
			return
		}
		for _, e := range splitAllowlist(v) {
			if e == "" {
				t.Fatalf("empty entry from %q", v)
			}
		}
	})
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
