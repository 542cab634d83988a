package egress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvmd/cvmd/ipc"
)

// Resolver is the part of *net.Resolver the proxy uses; tests inject stubs.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Defaults for Config's zero values.
const (
	DefaultDNSTimeout     = 5 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultIdleTimeout    = 5 * time.Minute
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultMaxTunnels     = 64
)

// Config is what a Proxy needs. Zero durations and limits take the defaults.
type Config struct {
	Allow       Allowlist            // for every client
	Clients     map[string]Allowlist // extra entries per client
	Grants      map[string]Allowlist // pull grants per client at start (SetGrant replaces them)
	AllowPublic bool                 // development: allow unlisted hosts that pass the SSRF guard
	Resolver    Resolver             // nil: net.DefaultResolver
	// Dial connects to a checked address ("ip:port"); nil: a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	Log  *slog.Logger

	DNSTimeout, ConnectTimeout, IdleTimeout, HeaderTimeout time.Duration
	MaxTunnels                                             int // per client
}

// Proxy is the HTTP CONNECT and absolute-URI forward proxy. The client a
// connection belongs to is the name of the listener it arrived on, never
// anything the client says.
type Proxy struct {
	cfg Config

	mu          sync.Mutex
	computation map[string]Allowlist  // guarded by mu; per-computation entries by client
	grants      map[string]Allowlist  // guarded by mu; per-computation pull grants by client (never past the SSRF guard)
	inUse       map[string]int        // guarded by mu; tunnels and requests by client
	denials     map[string]*logWindow // guarded by mu; denial log rate per client
}

// maxDenialLogs is how many denials per client and second get their own log
// line; beyond it they are counted, and the count is logged with the first
// denial after that second. A looping algorithm must not be able to flood the log forwarder.
const maxDenialLogs = 50

// maxDenialClients bounds the per-client denial windows kept at once. A
// client's window goes when its listener closes (each algorithm sandbox is a
// client of its own, so without that the map would grow by one per run);
// past the bound, windows older than a second are dropped first, then the
// oldest. A dropped window's uncounted denials are logged as it goes.
const maxDenialClients = 256

type logWindow struct {
	start      time.Time
	n, skipped int
}

// skippedLine logs the summary of a window's suppressed denials.
func (p *Proxy) skippedLine(client string, skipped int) {
	if skipped > 0 {
		p.cfg.Log.Info("egress", "client", client, "decision", "denied", "reason", fmt.Sprintf("%d more denials in the previous second, not logged one by one", skipped))
	}
}

// logDenial logs a refusal, subject to the per-client rate.
func (p *Proxy) logDenial(client string, attrs ...any) {
	now := time.Now()
	p.mu.Lock()
	w := p.denials[client]
	var evicted map[string]int
	if w == nil {
		evicted = p.makeRoomLocked(now)
		w = &logWindow{}
		p.denials[client] = w
	}
	skipped := 0
	if now.Sub(w.start) >= time.Second {
		skipped = w.skipped
		w.start, w.n, w.skipped = now, 0, 0
	}
	w.n++
	over := w.n > maxDenialLogs
	if over {
		w.skipped++
	}
	p.mu.Unlock()
	for c, n := range evicted {
		p.skippedLine(c, n)
	}
	p.skippedLine(client, skipped)
	if !over {
		p.cfg.Log.Info("egress", attrs...)
	}
}

// makeRoomLocked drops windows until a new one fits under maxDenialClients
// and returns the suppressed counts of those it dropped. Preconditions: p.mu
// held.
func (p *Proxy) makeRoomLocked(now time.Time) map[string]int {
	if len(p.denials) < maxDenialClients {
		return nil
	}
	dropped := map[string]int{}
	for c, w := range p.denials {
		if now.Sub(w.start) >= time.Second {
			dropped[c] = w.skipped
			delete(p.denials, c)
		}
	}
	for len(p.denials) >= maxDenialClients {
		oldest := ""
		for c, w := range p.denials {
			if oldest == "" || w.start.Before(p.denials[oldest].start) {
				oldest = c
			}
		}
		dropped[oldest] = p.denials[oldest].skipped
		delete(p.denials, oldest)
	}
	return dropped
}

// forget drops what the proxy keeps about client once its listener is
// closed: its denial window (logging what it had suppressed) and its
// in-use count if nothing of it is in flight.
func (p *Proxy) forget(client string) {
	p.mu.Lock()
	skipped := 0
	if w := p.denials[client]; w != nil {
		skipped = w.skipped
		delete(p.denials, client)
	}
	if p.inUse[client] == 0 {
		delete(p.inUse, client)
	}
	p.mu.Unlock()
	p.skippedLine(client, skipped)
}

// listenerState is what one Serve call shares with its requests.
type listenerState struct {
	client string

	mu       sync.Mutex
	hijacked map[net.Conn]struct{} // guarded by mu; CONNECT tunnels being served
}

// New returns a Proxy for cfg.
func New(cfg Config) *Proxy {
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DNSTimeout, DefaultDNSTimeout)
	def(&cfg.ConnectTimeout, DefaultConnectTimeout)
	def(&cfg.IdleTimeout, DefaultIdleTimeout)
	def(&cfg.HeaderTimeout, DefaultHeaderTimeout)
	if cfg.MaxTunnels <= 0 {
		cfg.MaxTunnels = DefaultMaxTunnels
	}
	grants := map[string]Allowlist{}
	for c, g := range cfg.Grants {
		if len(g) > 0 {
			grants[c] = g
		}
	}
	return &Proxy{cfg: cfg, computation: map[string]Allowlist{}, grants: grants, inUse: map[string]int{}, denials: map[string]*logWindow{}}
}

// ClientClass is the part of a client name before its first '-': the
// supervisor names algorithm sandboxes "algo-<pid>-<n>", and entries for
// "algo" apply to all of them.
func ClientClass(client string) string {
	class, _, _ := strings.Cut(client, "-")
	return class
}

// SetComputationAllowlist replaces client's (or a client class's)
// per-computation entries.
func (p *Proxy) SetComputationAllowlist(client string, a Allowlist) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.computation[client] = a
}

// SetGrant replaces client's grant: the exact host:port entries a
// computation's pull mode may reach. A granted name or address still has
// to pass the SSRF guard (unless an operator IP/CIDR entry names the
// address): a manifest must not be able to reach loopback, link-local,
// metadata or private addresses. nil or empty revokes.
func (p *Proxy) SetGrant(client string, g Allowlist) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(g) == 0 {
		delete(p.grants, client)
		return
	}
	p.grants[client] = g
}

// Decision is the outcome of one request's policy check.
type Decision struct {
	Allowed bool
	Reason  string       // why: the matching entry, or what refused it
	Addrs   []netip.Addr // checked addresses to dial, in order
}

func deny(format string, args ...any) Decision {
	return Decision{Reason: fmt.Sprintf(format, args...)}
}

// Decide checks host:port for client: allowlist first (no DNS for an
// unlisted name), then resolution and the SSRF guard on every address.
func (p *Proxy) Decide(ctx context.Context, client, host string, port uint16) Decision {
	p.mu.Lock()
	lists := []Allowlist{p.cfg.Allow, p.cfg.Clients[client], p.computation[client]}
	if class := ClientClass(client); class != client {
		lists = append(lists, p.cfg.Clients[class], p.computation[class])
	}
	// Grants are looked up by the exact client only: the agent's grant is
	// never the algorithm's.
	granted := p.grants[client]
	p.mu.Unlock()
	matchAddr := func(a netip.Addr) (string, bool) {
		for _, l := range lists {
			if e, ok := l.MatchAddr(a, port); ok {
				return e, true
			}
		}
		return "", false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return deny("address with a zone")
		}
		if e, ok := matchAddr(a); ok {
			return Decision{Allowed: true, Reason: "allowed by " + e, Addrs: []netip.Addr{a}}
		}
		if c := Classify(a); c != "" {
			return deny("address %s is %s", a, c)
		}
		if e, ok := granted.MatchAddr(a, port); ok {
			return Decision{Allowed: true, Reason: "granted " + e, Addrs: []netip.Addr{a}}
		}
		if p.cfg.AllowPublic {
			return Decision{Allowed: true, Reason: "public address (allow_public)", Addrs: []netip.Addr{a}}
		}
		return deny("address %s:%d is not in the allowlist", a, port)
	}
	name, err := normalizeHost(host)
	if err != nil {
		return deny("bad host: %v", err)
	}
	reason := "public host (allow_public)"
	matched := false
	for _, l := range lists {
		if e, ok := l.MatchHost(name, port); ok {
			reason, matched = "allowed by "+e, true
			break
		}
	}
	if !matched {
		if e, ok := granted.MatchHost(name, port); ok {
			reason, matched = "granted "+e, true
		}
	}
	if !matched && !p.cfg.AllowPublic {
		return deny("host %s:%d is not in the allowlist", name, port)
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DNSTimeout)
	addrs, err := p.cfg.Resolver.LookupNetIP(dctx, "ip", name)
	cancel()
	if err != nil {
		return deny("resolving %s: %v", name, err)
	}
	if len(addrs) == 0 {
		return deny("%s has no address", name)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		// Go's resolver returns A records as IPv4-mapped IPv6; the IPv4
		// address is what gets dialed, so it is what gets checked.
		a = a.Unmap()
		if _, ok := matchAddr(a); !ok {
			if c := Classify(a); c != "" {
				return deny("host %s resolves to %s, which is %s", name, a, c)
			}
		}
		out = append(out, a)
	}
	return Decision{Allowed: true, Reason: reason, Addrs: out}
}

// dial connects to the first checked address that answers. No name is
// looked up here: the addresses are the ones Decide checked.
func (p *Proxy) dial(ctx context.Context, d Decision, port uint16) (net.Conn, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	var errs []error
	for _, a := range d.Addrs {
		ap := netip.AddrPortFrom(a, port)
		c, err := p.cfg.Dial(ctx, "tcp", ap.String())
		if err == nil {
			return c, ap, nil
		}
		errs = append(errs, err)
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

type stateKey struct{}

// Serve answers proxy requests on ln as client until ctx ends or ln fails;
// it then closes ln and the tunnels opened through it.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener, client string) error {
	ls := &listenerState{client: client, hijacked: map[net.Conn]struct{}{}}
	ctx, cancel := context.WithCancel(ctx)
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(io.Discard, "", 0),
		BaseContext:       func(net.Listener) context.Context { return context.WithValue(ctx, stateKey{}, ls) },
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		srv.Shutdown(sctx)
		scancel()
		srv.Close()
	})
	err := srv.Serve(ln)
	cancel()
	wg.Wait()
	ls.mu.Lock()
	for c := range ls.hijacked {
		c.Close()
	}
	ls.mu.Unlock()
	p.forget(client)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ServeHTTP handles one proxy request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ls, _ := r.Context().Value(stateKey{}).(*listenerState)
	if ls == nil {
		http.Error(w, "egress: no client identity", http.StatusInternalServerError)
		return
	}
	client := ls.client
	start := time.Now()
	host, port, err := ParseTarget(r)
	if err != nil {
		p.logDenial(client, "client", client, "method", r.Method, "target", r.RequestURI, "decision", "denied", "reason", "malformed request: "+err.Error())
		http.Error(w, "egress: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !p.acquire(client) {
		p.logDenial(client, "client", client, "method", r.Method, "host", host, "port", port, "decision", "denied", "reason", fmt.Sprintf("over %d concurrent tunnels", p.cfg.MaxTunnels))
		w.Header().Set("Retry-After", "1")
		http.Error(w, "egress: too many concurrent tunnels", http.StatusTooManyRequests)
		return
	}
	defer p.release(client)
	d := p.Decide(r.Context(), client, host, port)
	attrs := []any{"client", client, "method", r.Method, "host", host, "port", port}
	if !d.Allowed {
		p.logDenial(client, append(attrs, "decision", "denied", "reason", d.Reason, "duration_ms", time.Since(start).Milliseconds())...)
		http.Error(w, "egress: denied: "+d.Reason, http.StatusForbidden)
		return
	}
	up, down, addr, err := p.forward(w, r, d, port, ls)
	attrs = append(attrs, "decision", "allowed", "reason", d.Reason, "addr", addr.String(), "bytes_up", up, "bytes_down", down, "duration_ms", time.Since(start).Milliseconds())
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	p.cfg.Log.Info("egress", attrs...)
}

func (p *Proxy) acquire(client string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inUse[client] >= p.cfg.MaxTunnels {
		return false
	}
	p.inUse[client]++
	return true
}

func (p *Proxy) release(client string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inUse[client]--
	if p.inUse[client] <= 0 {
		delete(p.inUse, client)
	}
}

// ParseTarget returns the host and port a proxy request is for: CONNECT
// host:port (port required), or an absolute http:// URI (port 80 by
// default). Anything else is malformed.
func ParseTarget(r *http.Request) (host string, port uint16, err error) {
	if r.Method == http.MethodConnect {
		if r.URL == nil || r.URL.Host == "" || r.URL.Path != "" || r.URL.Scheme != "" {
			return "", 0, fmt.Errorf("CONNECT target %q is not host:port", r.RequestURI)
		}
		return splitHostPort(r.URL.Host, "")
	}
	if r.URL == nil || !r.URL.IsAbs() || r.URL.Host == "" {
		return "", 0, fmt.Errorf("request target %q is not an absolute URI", r.RequestURI)
	}
	if r.URL.Scheme != "http" {
		return "", 0, fmt.Errorf("scheme %q: use CONNECT for anything but http", r.URL.Scheme)
	}
	if r.URL.User != nil {
		return "", 0, fmt.Errorf("user info in the request target")
	}
	return splitHostPort(r.URL.Host, "80")
}

func splitHostPort(hostport, defPort string) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		if defPort == "" || strings.Contains(hostport, "]:") {
			return "", 0, fmt.Errorf("target %q: %v", hostport, err)
		}
		host, ps = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), defPort
	}
	if host == "" {
		return "", 0, fmt.Errorf("target %q has no host", hostport)
	}
	n, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("target %q: port %q", hostport, ps)
	}
	return host, uint16(n), nil
}

// forward serves an allowed request: a tunnel for CONNECT, else one
// forwarded HTTP/1.1 exchange.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, d Decision, port uint16, ls *listenerState) (up, down int64, addr netip.AddrPort, err error) {
	upstream, addr, err := p.dial(r.Context(), d, port)
	if err != nil {
		http.Error(w, "egress: connecting: "+err.Error(), http.StatusBadGateway)
		return 0, 0, addr, err
	}
	defer upstream.Close()
	if r.Method == http.MethodConnect {
		up, down, err = p.tunnel(w, upstream, ls)
		return up, down, addr, err
	}
	up, down, err = p.relay(w, r, upstream)
	return up, down, addr, err
}

func (p *Proxy) tunnel(w http.ResponseWriter, upstream net.Conn, ls *listenerState) (up, down int64, err error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "egress: cannot tunnel", http.StatusInternalServerError)
		return 0, 0, fmt.Errorf("response writer cannot hijack")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	ls.mu.Lock()
	ls.hijacked[conn] = struct{}{}
	ls.mu.Unlock()
	defer func() {
		ls.mu.Lock()
		delete(ls.hijacked, conn)
		ls.mu.Unlock()
	}()
	conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		return 0, 0, err
	}
	// Bytes the client sent right after its request (a TLS ClientHello,
	// say) may sit in the server's read buffer.
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		w, err := upstream.Write(b)
		up += int64(w)
		if err != nil {
			return up, 0, err
		}
	}
	r := ipc.RelayConns(conn, upstream, p.cfg.IdleTimeout, nil)
	switch {
	case r.Idle:
		err = errors.New("idle timeout")
	case r.ClientErr != nil:
		err = errors.New("client side: " + r.ClientErr.Error())
	case r.ServerErr != nil:
		err = errors.New("upstream side: " + r.ServerErr.Error())
	}
	return up + r.Up, r.Down, err
}

// hopHeaders are not forwarded (RFC 9110 §7.6.1), nor is anything named in Connection.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization", "Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func stripHop(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// relay forwards one request over the connection already dialed to the
// checked address and copies the response back.
func (p *Proxy) relay(w http.ResponseWriter, r *http.Request, upstream net.Conn) (up, down int64, err error) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Host = r.URL.Host
	out.Close = true
	stripHop(out.Header)
	body := &countReader{r: r.Body}
	out.Body = body
	if r.ContentLength == 0 {
		out.Body = nil
	}
	upstream = &idleConn{Conn: upstream, idle: p.cfg.IdleTimeout}
	if err := out.Write(upstream); err != nil {
		http.Error(w, "egress: sending request: "+err.Error(), http.StatusBadGateway)
		return body.n.Load(), 0, err
	}
	// The response's head is read into memory: bounded as the request's
	// (MaxHeaderBytes), or an upstream could grow the proxy without limit.
	head := &headLimit{r: upstream, left: maxResponseHeadBytes}
	res, err := http.ReadResponse(bufio.NewReader(head), out)
	if err != nil {
		http.Error(w, "egress: reading response: "+err.Error(), http.StatusBadGateway)
		return body.n.Load(), 0, err
	}
	head.left = -1
	defer res.Body.Close()
	stripHop(res.Header)
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	down, err = io.Copy(w, res.Body)
	return body.n.Load(), down, err
}

// maxResponseHeadBytes bounds a forwarded response's status line and
// headers (and what the reader buffers past them).
const maxResponseHeadBytes = 64<<10 + 4096

var errResponseHeadTooLarge = fmt.Errorf("response headers exceed %d bytes", maxResponseHeadBytes)

// headLimit reads at most left bytes from r while left ≥ 0; -1 lifts the
// bound (the head has been read).
type headLimit struct {
	r    io.Reader
	left int64
}

func (h *headLimit) Read(b []byte) (int, error) {
	if h.left < 0 {
		return h.r.Read(b)
	}
	if h.left == 0 {
		return 0, errResponseHeadTooLarge
	}
	if int64(len(b)) > h.left {
		b = b[:h.left]
	}
	n, err := h.r.Read(b)
	h.left -= int64(n)
	return n, err
}

type countReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countReader) Close() error { return c.r.Close() }

// idleConn bounds each read and write by idle: a forwarded exchange may take
// as long as it keeps moving.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(b)
}
