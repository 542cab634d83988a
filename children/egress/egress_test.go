package egress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/config"
)

func TestClassify(t *testing.T) {
	tests := []struct{ addr, class string }{
		{"0.0.0.0", "unspecified"}, {"0.1.2.3", "unspecified"}, {"::", "unspecified"},
		{"127.0.0.1", "loopback"}, {"127.255.0.9", "loopback"}, {"::1", "loopback"},
		{"10.0.0.1", "private"}, {"172.16.5.4", "private"}, {"172.31.255.255", "private"}, {"192.168.1.1", "private"}, {"fd12::1", "private"}, {"fec0::1", "private"},
		{"169.254.169.254", "link-local"}, {"169.254.0.1", "link-local"}, {"fe80::1", "link-local"},
		{"100.64.0.1", "cgnat"}, {"100.127.255.254", "cgnat"},
		{"224.0.0.1", "multicast"}, {"239.255.255.250", "multicast"}, {"ff02::1", "multicast"},
		{"::ffff:127.0.0.1", "ipv4-mapped"}, {"::ffff:8.8.8.8", "ipv4-mapped"},
		{"::127.0.0.1", "ipv4-compatible"},
		{"64:ff9b::a00:1", "ipv4-embedded"}, {"2002:a00:1::1", "ipv4-embedded"}, {"2001:0:4136:e378::1", "ipv4-embedded"},
		{"255.255.255.255", "reserved"}, {"240.0.0.1", "reserved"}, {"198.18.0.1", "reserved"}, {"192.0.2.1", "reserved"}, {"2001:db8::1", "reserved"},
		{"8.8.8.8", ""}, {"1.1.1.1", ""}, {"100.128.0.1", ""}, {"172.32.0.1", ""}, {"2606:4700::1111", ""},
	}
	for _, tt := range tests {
		if got := Classify(netip.MustParseAddr(tt.addr)); got != tt.class {
			t.Errorf("Classify(%s) = %q, want %q", tt.addr, got, tt.class)
		}
	}
}

func TestParseAllowlist(t *testing.T) {
	good := []string{"pypi.org", "PyPI.org.", "*.pythonhosted.org:443", "example.com:8000-8100", "h:*", "10.0.0.5", "10.0.0.0/8:5432", "[fd00::1]:443", "[fd00::/8]", "a.b, c.d\td.e"}
	if _, err := ParseAllowlist(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"*.com", "ex!ample", "host:0", "host:70000", "host:9-3", "fd00::1", "[1.2.3.4]:80", "bü.de", ":80", "*", "a..b", "10.0.0.0/33", "[fd00::1"} {
		t.Run(bad, func(t *testing.T) {
			if _, err := ParseAllowlist([]string{bad}); err == nil {
				t.Fatalf("%q accepted", bad)
			}
		})
	}
	a, _ := ParseAllowlist([]string{"pypi.org", "*.pythonhosted.org:443", "h:8000-8100", "10.1.0.0/16:*"})
	match := []struct {
		host string
		port uint16
		ok   bool
	}{
		{"pypi.org", 443, true}, {"pypi.org", 80, true}, {"pypi.org", 8080, false},
		{"files.pythonhosted.org", 443, true}, {"a.b.pythonhosted.org", 443, true}, {"pythonhosted.org", 443, false}, {"evilpythonhosted.org", 443, false},
		{"h", 8050, true}, {"h", 8101, false}, {"pypi.org.evil", 443, false},
	}
	for _, m := range match {
		if _, ok := a.MatchHost(m.host, m.port); ok != m.ok {
			t.Errorf("MatchHost(%s, %d) = %v", m.host, m.port, ok)
		}
	}
	if _, ok := a.MatchAddr(netip.MustParseAddr("10.1.2.3"), 9); !ok {
		t.Error("CIDR entry does not match")
	}
}

// stubResolver answers every name with fixed addresses and counts lookups.
type stubResolver struct {
	addrs map[string][]netip.Addr
	n     atomic.Int32
}

func (s *stubResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	s.n.Add(1)
	if a, ok := s.addrs[host]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("no such host %s", host)
}

// dialRecorder dials for real and records every attempt.
type dialRecorder struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *dialRecorder) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.addrs)
}

// logBuffer collects the proxy's log lines.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // guarded by mu; closed and replaced at each write
}

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.written != nil {
		close(l.written)
		l.written = nil
	}
	return l.buf.Write(b)
}

// waitLines waits until cond holds for the lines logged so far, checking
// after each write, for at most 10 s.
func (l *logBuffer) waitLines(t *testing.T, what string, cond func([]map[string]any) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		if l.written == nil {
			l.written = make(chan struct{})
		}
		next := l.written
		l.mu.Unlock()
		if cond(l.lines()) {
			return
		}
		select {
		case <-next:
		case <-timeout:
			t.Fatalf("waiting for %s; logged: %v", what, l.lines())
		}
	}
}

func (l *logBuffer) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(l.buf.Bytes()), []byte("\n")) {
		m := map[string]any{}
		if json.Unmarshal(line, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

type harness struct {
	addr string
	res  *stubResolver
	dial *dialRecorder
	logs *logBuffer
	p    *Proxy
}

// startProxy serves a Proxy as client "algo" on a loopback listener.
func startProxy(t testing.TB, allow []string, res map[string][]netip.Addr, mutate func(*Config)) *harness {
	t.Helper()
	a, err := ParseAllowlist(allow)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{res: &stubResolver{addrs: res}, dial: &dialRecorder{}, logs: &logBuffer{}}
	cfg := Config{Allow: a, Resolver: h.res, Dial: h.dial.dial, Log: slog.New(slog.NewJSONHandler(h.logs, nil)), IdleTimeout: 5 * time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	h.p = New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.p.Serve(ctx, ln, "algo") }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

// rawRequest sends req on a fresh connection and returns the response.
func rawRequest(t testing.TB, addr, req string) (*http.Response, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response to %q: %v", req, err)
	}
	return res, c, br
}

func origin(t testing.TB) (*httptest.Server, string) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Saw-Proxy-Connection", r.Header.Get("Proxy-Connection"))
		fmt.Fprintf(w, "hello %s %s %d", r.Method, r.URL.Path, len(body))
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, port
}

func TestConnectAndForward(t *testing.T) {
	testutil.CheckLeaks(t)
	_, port := origin(t)
	h := startProxy(t, []string{"127.0.0.1:" + port, "origin.test:" + port}, map[string][]netip.Addr{"origin.test": {netip.MustParseAddr("127.0.0.1")}}, func(c *Config) {
		// origin.test resolves to loopback: allowed only because 127.0.0.1:port is listed by IP.
	})
	t.Run("CONNECT by IP", func(t *testing.T) {
		res, c, br := rawRequest(t, h.addr, "CONNECT 127.0.0.1:"+port+" HTTP/1.1\r\nHost: 127.0.0.1:"+port+"\r\n\r\n")
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
		inner, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(inner.Body)
		if string(b) != "hello POST /up 5" {
			t.Fatalf("through the tunnel: %q", b)
		}
	})
	t.Run("CONNECT by name", func(t *testing.T) {
		res, _, _ := rawRequest(t, h.addr, "CONNECT origin.test:"+port+" HTTP/1.1\r\nHost: origin.test\r\n\r\n")
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	})
	t.Run("plain HTTP forward", func(t *testing.T) {
		res, _, _ := rawRequest(t, h.addr, "GET http://127.0.0.1:"+port+"/x HTTP/1.1\r\nHost: 127.0.0.1:"+port+"\r\nProxy-Connection: keep-alive\r\n\r\n")
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 || string(b) != "hello GET /x 0" {
			t.Fatalf("%d %q", res.StatusCode, b)
		}
		if res.Header.Get("X-Saw-Proxy-Connection") != "" {
			t.Fatal("hop-by-hop Proxy-Connection forwarded")
		}
	})
	// Every decision is logged with the client, and allowed ones with bytes and duration.
	h.logs.waitLines(t, "3 allowed decisions with bytes and duration", func(lines []map[string]any) bool {
		allowed := 0
		for _, l := range lines {
			if l["decision"] == "allowed" && l["client"] == "algo" && l["bytes_up"] != nil && l["duration_ms"] != nil {
				allowed++
			}
		}
		return allowed >= 3
	})
}

// TestSSRFGuard: an allowlisted name resolving to each forbidden class is
// refused before any dial.
func TestSSRFGuard(t *testing.T) {
	testutil.CheckLeaks(t)
	cases := map[string]string{
		"loopback": "127.0.0.1", "loopback6": "::1", "private": "10.1.2.3", "private172": "172.20.0.1", "private192": "192.168.0.10",
		"ula": "fd00::5", "metadata": "169.254.169.254", "linklocal6": "fe80::1", "cgnat": "100.64.1.1",
		"multicast": "224.0.0.251", "unspecified": "0.0.0.0", "unspecified6": "::", "nat64": "64:ff9b::7f00:1",
		"sixtofour": "2002:7f00:1::1", "teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2", "broadcast": "255.255.255.255",
	}
	res := map[string][]netip.Addr{}
	var allow []string
	for name, a := range cases {
		res[name+".test"] = []netip.Addr{netip.MustParseAddr(a)}
		allow = append(allow, name+".test:443")
	}
	res["mixed.test"] = []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.0.0.1")}
	allow = append(allow, "mixed.test:443")
	h := startProxy(t, allow, res, nil)
	for name, a := range cases {
		t.Run(name, func(t *testing.T) {
			res, _, _ := rawRequest(t, h.addr, "CONNECT "+name+".test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
			b, _ := io.ReadAll(res.Body)
			want := Classify(netip.MustParseAddr(a))
			if res.StatusCode != 403 || !strings.Contains(string(b), want) {
				t.Fatalf("%d %q, want 403 naming %q", res.StatusCode, b, want)
			}
		})
	}
	t.Run("name resolving to a public and a private address", func(t *testing.T) {
		res, _, _ := rawRequest(t, h.addr, "CONNECT mixed.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
		if res.StatusCode != 403 {
			t.Fatalf("status %d", res.StatusCode)
		}
	})
	t.Run("literal addresses of forbidden classes", func(t *testing.T) {
		for _, a := range []string{"127.0.0.1:443", "[::ffff:127.0.0.1]:443", "169.254.169.254:80", "[::1]:443"} {
			res, _, _ := rawRequest(t, h.addr, "CONNECT "+a+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if res.StatusCode != 403 {
				t.Fatalf("%s: status %d", a, res.StatusCode)
			}
		}
	})
	if n := h.dial.count(); n != 0 {
		t.Fatalf("%d dials happened: %v", n, h.dial.addrs)
	}
}

func TestDenied(t *testing.T) {
	testutil.CheckLeaks(t)
	_, port := origin(t)
	h := startProxy(t, []string{"allowed.test:443"}, map[string][]netip.Addr{"other.test": {netip.MustParseAddr("127.0.0.1")}}, nil)
	tests := []struct{ name, req, why string }{
		{"host not listed", "CONNECT other.test:443 HTTP/1.1\r\nHost: x\r\n\r\n", "not in the allowlist"},
		{"listed host, other port", "CONNECT allowed.test:8443 HTTP/1.1\r\nHost: x\r\n\r\n", "not in the allowlist"},
		{"suffix trick", "CONNECT allowed.test.evil:443 HTTP/1.1\r\nHost: x\r\n\r\n", "not in the allowlist"},
		{"unlisted IP", "GET http://127.0.0.1:" + port + "/ HTTP/1.1\r\nHost: x\r\n\r\n", "loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _, _ := rawRequest(t, h.addr, tt.req)
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != 403 || !strings.Contains(string(b), tt.why) {
				t.Fatalf("%d %q, want 403 with %q", res.StatusCode, b, tt.why)
			}
		})
	}
	if h.res.n.Load() != 0 || h.dial.count() != 0 {
		t.Fatalf("unlisted names were resolved (%d) or dialed (%d)", h.res.n.Load(), h.dial.count())
	}
}

func TestMalformedRequests(t *testing.T) {
	testutil.CheckLeaks(t)
	h := startProxy(t, []string{"a.test"}, nil, nil)
	for _, req := range []string{
		"GET /relative HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"CONNECT a.test:0 HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"CONNECT a.test:99999 HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GET http://user:pw@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GARBAGE\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nBad Header\r\n\r\n",
	} {
		t.Run(strings.Fields(req)[0]+" "+strings.Fields(req + " x")[1], func(t *testing.T) {
			res, _, _ := rawRequest(t, h.addr, req)
			if res.StatusCode != 400 {
				t.Fatalf("%q: status %d, want 400", req, res.StatusCode)
			}
		})
	}
}

func TestTunnelCap(t *testing.T) {
	testutil.CheckLeaks(t)
	_, port := origin(t)
	h := startProxy(t, []string{"127.0.0.1:" + port}, nil, func(c *Config) { c.MaxTunnels = 2 })
	for range 2 {
		res, _, _ := rawRequest(t, h.addr, "CONNECT 127.0.0.1:"+port+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	res, _, _ := rawRequest(t, h.addr, "CONNECT 127.0.0.1:"+port+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if res.StatusCode != 429 || res.Header.Get("Retry-After") != "1" {
		t.Fatalf("third tunnel: %d", res.StatusCode)
	}
}

func TestComputationAllowlistAndSettings(t *testing.T) {
	cfg, err := ConfigFromSettings(&config.EgressSettings{Allow: []string{"pypi.org, *.pythonhosted.org:443"}, Clients: map[string]*config.EgressAllowlist{"agent": {Allow: []string{"kbs.test:8080"}}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Resolver = &stubResolver{addrs: map[string][]netip.Addr{"kbs.test": {netip.MustParseAddr("8.8.4.4")}, "extra.test": {netip.MustParseAddr("8.8.8.8")}}}
	p := New(*cfg)
	ctx := context.Background()
	if d := p.Decide(ctx, "agent", "kbs.test", 8080); !d.Allowed {
		t.Fatalf("agent entry: %s", d.Reason)
	}
	if d := p.Decide(ctx, "algo", "kbs.test", 8080); d.Allowed {
		t.Fatal("agent's entry applied to algo")
	}
	if d := p.Decide(ctx, "algo", "extra.test", 443); d.Allowed {
		t.Fatal("unlisted host allowed")
	}
	a, _ := ParseAllowlist([]string{"extra.test"})
	p.SetComputationAllowlist("algo", a)
	if d := p.Decide(ctx, "algo", "extra.test", 443); !d.Allowed {
		t.Fatalf("computation entry: %s", d.Reason)
	}
	if d := p.Decide(ctx, "algo-4242-7", "extra.test", 443); !d.Allowed {
		t.Fatalf("class entry for a sandbox named algo-4242-7: %s", d.Reason)
	}
	if d := p.Decide(ctx, "algorithm", "extra.test", 443); d.Allowed {
		t.Fatal("class matched a different name")
	}
	if _, err := ConfigFromSettings(&config.EgressSettings{Allow: []string{"*.com"}}); err == nil {
		t.Fatal("bad entry accepted")
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET http://a.test/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET http://[::1]:80/ HTTP/1.1\r\n\r\n",
		"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(s)))
		if err != nil {
			return
		}
		host, port, err := ParseTarget(r)
		if err != nil {
			return
		}
		if host == "" || port == 0 {
			t.Fatalf("accepted empty host or port 0 from %q", s)
		}
		p := New(Config{Resolver: &stubResolver{}})
		if d := p.Decide(context.Background(), "c", host, port); d.Allowed {
			t.Fatalf("empty allowlist allowed %q", host)
		}
	})
}

func FuzzParseAllowlist(f *testing.F) {
	for _, s := range []string{"pypi.org", "*.a.b:1-2", "[fd00::/8]:*", "10.0.0.0/8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAllowlist([]string{s})
		if err != nil {
			return
		}
		for _, r := range a {
			if r.Host == "" && !r.Prefix.IsValid() {
				t.Fatalf("rule %q allows nothing identifiable", r.Text)
			}
		}
	})
}

// TestDenialLogsRateLimited runs in a synctest bubble: the second that
// closes a window passes on the bubble's clock, not the machine's.
func TestDenialLogsRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &logBuffer{}
		p := New(Config{Log: slog.New(slog.NewJSONHandler(logs, nil))})
		for range 120 {
			p.logDenial("algo", "client", "algo", "decision", "denied", "reason", "test")
		}
		p.logDenial("agent", "client", "agent", "decision", "denied", "reason", "test")
		count := func(client string) int {
			n := 0
			for _, l := range logs.lines() {
				if l["client"] == client {
					n++
				}
			}
			return n
		}
		if got := count("algo"); got != maxDenialLogs {
			t.Fatalf("%d lines for 120 denials, want %d", got, maxDenialLogs)
		}
		if count("agent") != 1 {
			t.Fatal("another client's denial was suppressed")
		}
		time.Sleep(time.Second)
		p.logDenial("algo", "client", "algo", "decision", "denied", "reason", "test")
		last := logs.lines()
		if r, _ := last[len(last)-2]["reason"].(string); !strings.Contains(r, "70 more denials") {
			t.Fatalf("no summary of the suppressed denials: %v", last[len(last)-2])
		}
	})
}

// TestDenialWindowsBounded: a client's denial window goes when its listener
// closes, and however many clients are denied, at most maxDenialClients
// windows are kept; suppressed counts are logged as windows go.
func TestDenialWindowsBounded(t *testing.T) {
	testutil.CheckLeaks(t)
	logs := &logBuffer{}
	p := New(Config{Log: slog.New(slog.NewJSONHandler(logs, nil))})
	for i := range 10 * maxDenialClients {
		c := fmt.Sprintf("algo-1-%d", i)
		for range maxDenialLogs + 1 {
			p.logDenial(c, "client", c, "decision", "denied", "reason", "test")
		}
	}
	p.mu.Lock()
	n := len(p.denials)
	p.mu.Unlock()
	if n > maxDenialClients {
		t.Fatalf("%d denial windows kept for %d clients, want at most %d", n, 10*maxDenialClients, maxDenialClients)
	}
	summaries := 0
	for _, l := range logs.lines() {
		if r, _ := l["reason"].(string); strings.Contains(r, "1 more denials") {
			summaries++
		}
	}
	if summaries < 9*maxDenialClients {
		t.Errorf("%d summaries of suppressed denials for %d dropped windows", summaries, 10*maxDenialClients-n)
	}

	// A sandbox's listener closes: its window and in-use count go with it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background(), ln, "algo-9-9") }()
	resp, c, _ := rawRequest(t, ln.Addr().String(), "CONNECT unlisted.example:443 HTTP/1.1\r\nHost: unlisted.example:443\r\n\r\n")
	c.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	ln.Close()
	if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	p.mu.Lock()
	_, window := p.denials["algo-9-9"]
	_, inUse := p.inUse["algo-9-9"]
	p.mu.Unlock()
	if window || inUse {
		t.Errorf("after its listener closed the proxy still keeps algo-9-9: window %v, in use %v", window, inUse)
	}
}
