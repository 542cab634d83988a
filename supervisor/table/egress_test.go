package table

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/supervisor/manager"
)

// The egress's allowlist comes from Cocos's environment file, read with the
// manager link's parser, each time the egress starts.
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
		{"a malformed file denies everything", "COCOS_EGRESS_ALLOWLIST=a.example\nnot an assignment\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "environment")
			os.WriteFile(f, []byte(tc.file), 0o600)
			in := &SettingsInput{Environment: manager.GuestEnvironment(f, true)}
			m, err := egressSettings(in)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.(*config.EgressSettings).GetAllow(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("allow %q, want %q", got, tc.want)
			}
		})
	}
	for name, env := range map[string]func() (map[string]string, string, error){
		"missing file":   manager.GuestEnvironment(filepath.Join(t.TempDir(), "missing"), true),
		"no environment": nil,
		"unreadable":     func() (map[string]string, string, error) { return nil, "x", errors.New("no") },
	} {
		if got := egressAllowlist(&SettingsInput{Environment: env}); got != nil {
			t.Errorf("%s: allow %q", name, got)
		}
	}
}

func FuzzSplitAllowlist(f *testing.F) {
	f.Add("a, b")
	f.Add(" ,\t\n")
	f.Fuzz(func(t *testing.T, v string) {
		for _, e := range splitAllowlist(v) {
			if e == "" {
				t.Fatalf("empty entry from %q", v)
			}
		}
	})
}
