package table

import (
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/config"
)

// EgressAllowlistVar is the Cocos environment variable holding the egress
// allowlist (syntax in docs/ingress-egress.md).
const EgressAllowlistVar = "COCOS_EGRESS_ALLOWLIST"

// egressSettings gives the egress the entries of COCOS_EGRESS_ALLOWLIST,
// read from Cocos's environment each time the egress starts. An
// environment that cannot be read is logged and gives an empty list: the
// egress then denies everything.
func egressSettings(in *SettingsInput) (proto.Message, error) {
	s := &config.EgressSettings{Allow: egressAllowlist(in)}
	// The agent may reach its MAA instance (azure-token), and nothing else
	// beyond the allowlist and its pull grant.
	if e, err := maaGrant(maaURL(in)); err != nil {
		in.log().Error("MAA instance not granted: azure-token will be refused by the egress", "err", err)
	} else {
		s.Clients = map[string]*config.EgressAllowlist{MAAClient: {Allow: []string{e}}}
	}
	if in.PullGrant != nil {
		for client, entries := range in.PullGrant() {
			if s.Grants == nil {
				s.Grants = map[string]*config.EgressAllowlist{}
			}
			s.Grants[client] = &config.EgressAllowlist{Allow: entries}
		}
	}
	return s, nil
}

// MAAClient is the egress client that asks MAA: the agent (its edge name).
const MAAClient = "agent"

func egressAllowlist(in *SettingsInput) []string {
	if in.Environment == nil {
		return nil
	}
	vars, source, err := in.Environment()
	if err != nil {
		in.log().Error("egress allowlist not read: the egress denies everything", "env", source, "err", err)
		return nil
	}
	entries := splitAllowlist(vars[EgressAllowlistVar])
	if len(entries) == 0 {
		in.log().Info("egress allowlist empty: the egress denies everything", "env", source)
		return nil
	}
	in.log().Info("egress allowlist", "entries", len(entries), "allow", strings.Join(entries, " "))
	return entries
}

// splitAllowlist splits a COCOS_EGRESS_ALLOWLIST value at commas and white
// space (the egress checks each entry).
func splitAllowlist(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
}
