package egress

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one allowlist entry.
type Rule struct {
	Text     string       // the entry as written
	Host     string       // exact host, or the suffix after "*." when Wildcard
	Wildcard bool         // "*.suffix": any name strictly below suffix
	Prefix   netip.Prefix // valid for IP and CIDR entries
	PortLo   uint16
	PortHi   uint16 // PortLo..PortHi inclusive; 0..0 means 80 and 443
}

// Allowlist is a parsed list of entries; the zero value allows nothing.
type Allowlist []Rule

// ParseAllowlist parses entries; each may itself hold several entries
// separated by commas or white space (so the raw COCOS_EGRESS_ALLOWLIST value
// can be passed as one entry). Syntax, per entry:
//
//	host[:ports]         exact name, e.g. pypi.org:443
//	*.suffix[:ports]     any name under suffix (not suffix itself), e.g. *.pythonhosted.org
//	ip[:ports]           an IPv4 address, or [ipv6]:ports
//	cidr[:ports]         e.g. 10.1.0.0/16:5432 or [fd00::/8]:443
//
// ports is a port, lo-hi, or * (any); without ports, 80 and 443. IP and CIDR
// entries are the only way to reach an address the SSRF guard refuses.
func ParseAllowlist(entries []string) (Allowlist, error) {
	var out Allowlist
	for _, e := range entries {
		for _, f := range strings.FieldsFunc(e, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' }) {
			r, err := parseRule(f)
			if err != nil {
				return nil, fmt.Errorf("egress: allowlist entry %q: %w", f, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// ParseGrant parses a pull grant: exact "host:port", "ip:port" or
// "[ipv6]:port" entries only (no wildcard, range, CIDR or default ports):
// a grant names what a manifest declared and nothing more.
func ParseGrant(entries []string) (Allowlist, error) {
	var out Allowlist
	for _, e := range entries {
		r, err := parseRule(e)
		if err != nil {
			return nil, fmt.Errorf("egress: grant entry %q: %w", e, err)
		}
		switch {
		case r.Wildcard:
			return nil, fmt.Errorf("egress: grant entry %q: wildcards are not granted", e)
		case r.PortLo == 0 || r.PortLo != r.PortHi:
			return nil, fmt.Errorf("egress: grant entry %q: needs exactly one port", e)
		case r.Prefix.IsValid() && !r.Prefix.IsSingleIP():
			return nil, fmt.Errorf("egress: grant entry %q: ranges are not granted", e)
		}
		out = append(out, r)
	}
	return out, nil
}

func parseRule(s string) (Rule, error) {
	r := Rule{Text: s}
	hostPart, portPart := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return r, fmt.Errorf("missing ]")
		}
		hostPart = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return r, fmt.Errorf("unexpected %q after ]", rest)
			}
			portPart = rest[1:]
		}
		if !strings.Contains(hostPart, ":") {
			return r, fmt.Errorf("brackets are for IPv6 only")
		}
	} else if i := strings.LastIndex(s, ":"); i >= 0 {
		hostPart, portPart = s[:i], s[i+1:]
		if strings.Contains(hostPart, ":") {
			return r, fmt.Errorf("IPv6 addresses need brackets")
		}
	}
	if hostPart == "" {
		return r, fmt.Errorf("no host")
	}
	if portPart != "" || strings.HasSuffix(s, ":") {
		lo, hi, err := parsePorts(portPart)
		if err != nil {
			return r, err
		}
		r.PortLo, r.PortHi = lo, hi
	}
	if strings.Contains(hostPart, "/") {
		p, err := netip.ParsePrefix(hostPart)
		if err != nil {
			return r, err
		}
		r.Prefix = p.Masked()
		return r, nil
	}
	if a, err := netip.ParseAddr(hostPart); err == nil {
		if a.Zone() != "" {
			return r, fmt.Errorf("zones are not allowed")
		}
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
		return r, nil
	}
	if strings.HasPrefix(hostPart, "*.") {
		r.Wildcard = true
		hostPart = hostPart[2:]
	}
	h, err := normalizeHost(hostPart)
	if err != nil {
		return r, err
	}
	if !strings.Contains(h, ".") && r.Wildcard {
		return r, fmt.Errorf("wildcard over a top-level name")
	}
	r.Host = h
	return r, nil
}

func parsePorts(s string) (lo, hi uint16, err error) {
	if s == "*" {
		return 1, 65535, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	l, err := parsePort(a)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return l, l, nil
	}
	h, err := parsePort(b)
	if err != nil {
		return 0, 0, err
	}
	if h < l {
		return 0, 0, fmt.Errorf("port range %d-%d is empty", l, h)
	}
	return l, h, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want 1-65535", s)
	}
	return uint16(n), nil
}

// normalizeHost lower-cases a DNS name, drops one trailing dot and checks it
// is an ASCII (punycode) host name.
func normalizeHost(h string) (string, error) {
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if h == "" || len(h) > 253 {
		return "", fmt.Errorf("host name of %d characters", len(h))
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("host name %q has an empty or over-long label", h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("host name %q has character %q (use punycode)", h, c)
			}
		}
	}
	return h, nil
}

func (r *Rule) portOK(port uint16) bool {
	if r.PortLo == 0 {
		return port == 80 || port == 443
	}
	return port >= r.PortLo && port <= r.PortHi
}

// MatchHost returns the entry allowing the name host (normalized) on port.
func (a Allowlist) MatchHost(host string, port uint16) (string, bool) {
	for i := range a {
		r := &a[i]
		if r.Host == "" || !r.portOK(port) {
			continue
		}
		if !r.Wildcard && host == r.Host || r.Wildcard && strings.HasSuffix(host, "."+r.Host) {
			return r.Text, true
		}
	}
	return "", false
}

// MatchAddr returns the IP or CIDR entry allowing addr on port.
func (a Allowlist) MatchAddr(addr netip.Addr, port uint16) (string, bool) {
	for i := range a {
		r := &a[i]
		if r.Prefix.IsValid() && r.portOK(port) && r.Prefix.Contains(addr) {
			return r.Text, true
		}
	}
	return "", false
}

// Address classes the SSRF guard refuses unless an IP or CIDR entry allows
// the address explicitly. Checked in this order; the first match names the
// refusal.
var forbidden = []struct {
	class    string
	prefixes []netip.Prefix
}{
	{"unspecified", prefixes("0.0.0.0/8", "::/128")},
	{"loopback", prefixes("127.0.0.0/8", "::1/128")},
	{"ipv4-mapped", prefixes("::ffff:0:0/96")},
	{"ipv4-compatible", prefixes("::/96")},
	{"ipv4-embedded", prefixes("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32")}, // NAT64, 6to4, Teredo
	{"private", prefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")},
	{"link-local", prefixes("169.254.0.0/16", "fe80::/10")}, // includes 169.254.169.254, the cloud metadata service
	{"cgnat", prefixes("100.64.0.0/10")},
	{"multicast", prefixes("224.0.0.0/4", "ff00::/8")},
	{"reserved", prefixes("240.0.0.0/4", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "100::/64")},
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// Classify returns the SSRF class that forbids addr, or "" for a public
// unicast address.
func Classify(addr netip.Addr) string {
	addr = addr.WithZone("")
	for _, f := range forbidden {
		for _, p := range f.prefixes {
			if p.Contains(addr) {
				return f.class
			}
		}
	}
	if !addr.IsGlobalUnicast() {
		return "reserved"
	}
	return ""
}
