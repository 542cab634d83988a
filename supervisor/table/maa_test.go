package table

import (
	"reflect"
	"testing"

	"github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/proto/config"
)

// The agent reaches exactly its MAA instance's host:port through the egress
// (AGENT_MAA_URL, or Cocos's default), and its settings name the same
// instance; a URL that is not https://host[:port] grants nothing.
func TestMAAGrant(t *testing.T) {
	if got := Default().WithRole(RoleComputations); got != MAAClient {
		t.Fatalf("the agent is %q, the MAA grant is for %q", got, MAAClient)
	}
	for _, tc := range []struct {
		env        map[string]string
		url, grant string
	}{
		{nil, agent.MAAURL(""), "sharedeus2.eus2.attest.azure.net:443"},
		{map[string]string{MAAURLVar: "https://maa.example:8443/"}, "https://maa.example:8443/", "maa.example:8443"},
		{map[string]string{MAAURLVar: "https://127.0.0.1:5000"}, "https://127.0.0.1:5000", "127.0.0.1:5000"},
		{map[string]string{MAAURLVar: "https://[::1]:5000"}, "https://[::1]:5000", "[::1]:5000"},
		{map[string]string{MAAURLVar: "http://maa.example"}, "http://maa.example", ""},
		{map[string]string{MAAURLVar: "https://u:p@maa.example"}, "https://u:p@maa.example", ""},
		{map[string]string{MAAURLVar: "maa.example"}, "maa.example", ""},
	} {
		in := &SettingsInput{Environment: func() (map[string]string, string, error) { return tc.env, "test", nil }}
		m, _ := egressSettings(in)
		var want map[string]*config.EgressAllowlist
		if tc.grant != "" {
			want = map[string]*config.EgressAllowlist{MAAClient: {Allow: []string{tc.grant}}}
		}
		if got := m.(*config.EgressSettings).GetClients(); !reflect.DeepEqual(got, want) {
			t.Errorf("%v: egress clients %v, want %v", tc.env, got, want)
		}
		a, _ := agentSettings(in)
		if got := a.(*config.AgentSettings).GetMaaUrl(); got != tc.url {
			t.Errorf("%v: agent's MAA %q, want %q", tc.env, got, tc.url)
		}
	}
}
