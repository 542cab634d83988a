package table

import (
	"errors"
	"testing"

	"github.com/cvmd/cvmd/proto/config"
)

func TestAgentRoleChallengeFromEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  func() (map[string]string, string, error)
		want bool
	}{
		{"no environment", nil, false},
		{"unset", func() (map[string]string, string, error) { return map[string]string{}, "f", nil }, false},
		{"optional", func() (map[string]string, string, error) {
			return map[string]string{RoleChallengeVar: "optional"}, "f", nil
		}, false},
		{"required", func() (map[string]string, string, error) {
			return map[string]string{RoleChallengeVar: "required"}, "f", nil
		}, true},
		{"unknown value fails closed", func() (map[string]string, string, error) { return map[string]string{RoleChallengeVar: "yes"}, "f", nil }, true},
		{"unreadable fails closed", func() (map[string]string, string, error) { return nil, "f", errors.New("EACCES") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := agentSettings(&SettingsInput{Environment: tc.env})
			if err != nil {
				t.Fatal(err)
			}
			if got := m.(*config.AgentSettings).GetRequireRoleChallenge(); got != tc.want {
				t.Fatalf("require_role_challenge %v, want %v", got, tc.want)
			}
		})
	}
}
