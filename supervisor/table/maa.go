package table

import (
	"fmt"
	"net"
	"net/url"

	"github.com/cvmd/cvmd/children/agent"
)

// MAAURLVar in Cocos's environment names the Microsoft Azure Attestation
// instance the agent asks for azure-tokens (as Cocos; Cocos's default if
// unset: agent.MAAURL).
const MAAURLVar = "AGENT_MAA_URL"

// maaURL reads MAAURLVar; an environment that cannot be read gives the
// default (the egress then grants the default's host only).
func maaURL(in *SettingsInput) string {
	if in.Environment != nil {
		if vars, _, err := in.Environment(); err == nil {
			return agent.MAAURL(vars[MAAURLVar])
		}
	}
	return agent.MAAURL("")
}

// maaGrant is the egress entry that lets the agent reach the MAA instance
// at u: exactly its host and port (https only: the token's integrity is
// MAA's signature, but its nonce and evidence should not be read or
// changed on the way either).
func maaGrant(u string) (string, error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", MAAURLVar, u, err)
	}
	if p.Scheme != "https" || p.Hostname() == "" || p.User != nil {
		return "", fmt.Errorf("%s %q: want https://host[:port]", MAAURLVar, u)
	}
	port := p.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(p.Hostname(), port), nil
}
