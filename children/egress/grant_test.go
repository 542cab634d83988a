package egress

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

// TestGrant: a pull grant allows exactly its host:port for exactly its
// client, and never lets an address past the SSRF guard.
func TestGrant(t *testing.T) {
	res := &stubResolver{addrs: map[string][]netip.Addr{
		"data.example.com":  {netip.MustParseAddr("93.184.215.14")},
		"inside.example":    {netip.MustParseAddr("10.0.0.5")},
		"rebind.example":    {netip.MustParseAddr("127.0.0.1")},
		"metadata.internal": {netip.MustParseAddr("169.254.169.254")},
	}}
	operator, err := ParseAllowlist([]string{"127.0.0.1:9000"})
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{Allow: operator, Resolver: res})
	g, err := ParseGrant([]string{"data.example.com:443", "inside.example:443", "rebind.example:443", "metadata.internal:80", "127.0.0.1:8443", "127.0.0.1:9000", "93.184.215.14:8080"})
	if err != nil {
		t.Fatal(err)
	}
	p.SetGrant("agent", g)
	cases := []struct {
		client, host string
		port         uint16
		ok           bool
		reason       string
	}{
		{"agent", "data.example.com", 443, true, "granted data.example.com:443"},
		{"agent", "data.example.com", 80, false, "not in the allowlist"},
		{"agent", "93.184.215.14", 8080, true, "granted"},
		{"agent", "inside.example", 443, false, "10.0.0.5, which is private"},
		{"agent", "rebind.example", 443, false, "127.0.0.1, which is loopback"},
		{"agent", "metadata.internal", 80, false, "link-local"},
		{"agent", "127.0.0.1", 8443, false, "loopback"},
		{"agent", "127.0.0.1", 9000, true, "allowed by 127.0.0.1:9000"}, // the operator named it
		{"algo-1-1", "data.example.com", 443, false, "not in the allowlist"},
		{"algo", "data.example.com", 443, false, "not in the allowlist"},
	}
	for _, c := range cases {
		d := p.Decide(context.Background(), c.client, c.host, c.port)
		if d.Allowed != c.ok || !strings.Contains(d.Reason, c.reason) {
			t.Errorf("%s → %s:%d: allowed %v (%s), want %v (%s)", c.client, c.host, c.port, d.Allowed, d.Reason, c.ok, c.reason)
		}
	}
	p.SetGrant("agent", nil)
	if d := p.Decide(context.Background(), "agent", "data.example.com", 443); d.Allowed {
		t.Error("a revoked grant still allows")
	}
}

func TestParseGrantRefuses(t *testing.T) {
	for _, e := range []string{"*.example.com:443", "example.com", "example.com:1-9", "10.0.0.0/8:443", "example.com:*"} {
		if _, err := ParseGrant([]string{e}); err == nil {
			t.Errorf("grant %q accepted", e)
		}
	}
}

func FuzzParseGrant(f *testing.F) {
	for _, s := range []string{"host.example:443", "127.0.0.1:80", "[::1]:443", "*.x.com:443", "a:1-2", "10.0.0.0/8:1", "h:*", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, e string) {
		g, err := ParseGrant([]string{e})
		if err != nil {
			return
		}
		for _, r := range g {
			if r.Wildcard || r.PortLo == 0 || r.PortLo != r.PortHi || (r.Prefix.IsValid() && !r.Prefix.IsSingleIP()) {
				t.Fatalf("grant %q accepted as %+v", e, r)
			}
		}
	})
}
