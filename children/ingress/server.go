package ingress

import (
	"bytes"
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/ipc"
)

// h2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4). The
// ingress reads it before dialing the agent, so a client that never speaks
// HTTP/2 costs the agent nothing.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Defaults for Config's zero values.
const (
	DefaultHandshakeTimeout       = 10 * time.Second
	DefaultFirstRequestTimeout    = 10 * time.Second
	DefaultStreamlessTimeout      = time.Minute
	DefaultIdleTimeout            = 10 * time.Minute
	DefaultMaxConns               = 256
	DefaultMaxConnsPerSource      = 32
	DefaultMaxHandshakes          = 128
	DefaultMaxHandshakesPerSource = 32
	DefaultShutdownGrace          = 5 * time.Second
)

// busyWindow: a connection whose open streams carried HEADERS or DATA
// within it is doing work, and no new connection may evict it.
const busyWindow = 10 * time.Second

// Config is what a Server needs. Zero limits take the defaults above.
type Config struct {
	// TLS terminates TLS (and mTLS when it requires client certificates);
	// nil means plaintext.
	TLS *tls.Config
	// ATLS, with TLS set, runs the aTLS exchange after the handshake.
	ATLS *atls.ServerConfig
	// Backend makes one new connection to the agent per client connection.
	Backend func(ctx context.Context) (net.Conn, error)
	Log     *slog.Logger

	// HandshakeTimeout bounds accept → TLS/aTLS done and the HTTP/2
	// preface read.
	HandshakeTimeout time.Duration
	// FirstRequestTimeout bounds the handshake's end → the client's first
	// stream (HEADERS frame).
	FirstRequestTimeout time.Duration
	// StreamlessTimeout closes a connection that has had no open stream for
	// that long (gRPC clients reconnect when they need to).
	StreamlessTimeout time.Duration
	// IdleTimeout closes a connection on which no byte moved for that long,
	// streams or not.
	IdleTimeout time.Duration
	// MaxConns and MaxConnsPerSource cap established connections, in all
	// and per source address (IPv6 per /64). At a cap, a new connection
	// evicts the connection doing least work (no stream, longest first;
	// then streams that carried nothing for busyWindow) of that source, or
	// of the source holding most; it is refused only when every candidate
	// is busy.
	MaxConns          int
	MaxConnsPerSource int
	// MaxHandshakes and MaxHandshakesPerSource cap connections still in
	// their handshake; a new one evicts the oldest of its own source at the
	// per-source cap, else the oldest of all.
	MaxHandshakes          int
	MaxHandshakesPerSource int
	ShutdownGrace          time.Duration
}

// Mode names the security mode, in Cocos's words.
func (c *Config) Mode() string {
	switch {
	case c.TLS == nil:
		return "without TLS"
	case c.ATLS != nil && c.TLS.ClientAuth == tls.RequireAndVerifyClientCert:
		return "with maTLS"
	case c.ATLS != nil:
		return "with aTLS"
	case c.TLS.ClientAuth == tls.RequireAndVerifyClientCert:
		return "with mTLS"
	}
	return "with TLS"
}

// Server proxies client connections to the agent after terminating TLS or
// aTLS. It does not parse HTTP/2 beyond the preface: frame and header limits
// are the agent's gRPC server's.
type Server struct {
	cfg  Config
	drop *rateLimited

	mu              sync.Mutex
	pending         *list.List               // guarded by mu; *pendingConn, oldest first
	pendingBySource map[string]int           // guarded by mu
	active          map[net.Conn]*activeConn // guarded by mu; by raw conn
	activeBySource  map[string]int           // guarded by mu
	closing         bool                     // guarded by mu
}

// pendingConn is a connection in its handshake; raw is nil once it was
// evicted or promoted (its handler then leaves).
type pendingConn struct {
	raw    net.Conn
	source string
}

// activeConn is an established connection being relayed.
type activeConn struct {
	raw    net.Conn
	source string
	last   *atomic.Int64 // latest byte either way (unix ns)
	track  *connTracker
	// ended says why the ingress closed it (eviction, streamless timeout);
	// nil when the client or the agent ended it.
	ended atomic.Pointer[string]
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	orDefault := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	orDefault(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	orDefault(&cfg.FirstRequestTimeout, DefaultFirstRequestTimeout)
	orDefault(&cfg.StreamlessTimeout, DefaultStreamlessTimeout)
	orDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	orDefault(&cfg.ShutdownGrace, DefaultShutdownGrace)
	orDefaultN := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	orDefaultN(&cfg.MaxConns, DefaultMaxConns)
	orDefaultN(&cfg.MaxConnsPerSource, DefaultMaxConnsPerSource)
	orDefaultN(&cfg.MaxHandshakes, DefaultMaxHandshakes)
	orDefaultN(&cfg.MaxHandshakesPerSource, DefaultMaxHandshakesPerSource)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, drop: newRateLimited(cfg.Log, 10), pending: list.New(), pendingBySource: map[string]int{},
		active: map[net.Conn]*activeConn{}, activeBySource: map[string]int{}}
}

// Run serves ln until ctx ends, then closes ln, drops connections still in
// their handshake, gives established ones ShutdownGrace to finish and closes
// the rest. It returns nil after a cancellation.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
	})
	var err error
	backoff := time.Duration(0)
	for {
		raw, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			// Out of fds or memory, or a connection reset while queued:
			// wait a little and go on (as net/http does); anything else
			// means the listener is gone.
			if transientAccept(aerr) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.drop.note("accept failed; retrying", "err", aerr.Error(), "backoff_ms", backoff.Milliseconds())
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			err = fmt.Errorf("ingress: accepting: %w", aerr)
			cancel()
			break
		}
		backoff = 0
		el, ok := s.admit(raw)
		if !ok {
			raw.Close()
			continue
		}
		wg.Go(func() { s.handle(ctx, raw, el) })
	}
	s.shutdown()
	wg.Wait()
	return err
}

// transientAccept reports whether an Accept error is worth retrying.
func transientAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// admit registers raw as in its handshake. At MaxHandshakesPerSource it
// drops the oldest connection of the same source still in its handshake,
// else at MaxHandshakes the oldest of all: a flood of silent connections
// pushes out its own oldest members, not the newest client, and a flood from
// one source never pushes out another source's handshakes.
func (s *Server) admit(raw net.Conn) (*list.Element, bool) {
	src := sourceOf(raw.RemoteAddr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, false
	}
	var victim *list.Element
	if s.pendingBySource[src] >= s.cfg.MaxHandshakesPerSource {
		for el := s.pending.Front(); el != nil; el = el.Next() {
			if el.Value.(*pendingConn).source == src {
				victim = el
				break
			}
		}
	} else if s.pending.Len() >= s.cfg.MaxHandshakes {
		victim = s.pending.Front()
	}
	if victim != nil {
		old := victim.Value.(*pendingConn).raw
		s.removePending(victim)
		old.Close() // its handler sees the error and leaves
		s.drop.note("dropped the oldest connection still in its handshake", "remote", old.RemoteAddr().String(),
			"max_handshakes", s.cfg.MaxHandshakes, "max_handshakes_per_source", s.cfg.MaxHandshakesPerSource)
	}
	s.pendingBySource[src]++
	return s.pending.PushBack(&pendingConn{raw: raw, source: src}), true
}

// promote moves a connection from pending to active, making room at a cap
// by evicting the connection doing least work. It returns "" when ac is
// active, else why not ("" with ok false: evicted or closing meanwhile).
func (s *Server) promote(ac *activeConn, el *list.Element) (ok bool, refused string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if el.Value.(*pendingConn).raw == nil || s.closing {
		return false, ""
	}
	s.removePending(el)
	if s.activeBySource[ac.source] >= s.cfg.MaxConnsPerSource {
		v := s.victimLocked(ac.source, now)
		if v == nil {
			return false, fmt.Sprintf("%d connections from %s, all busy (max_connections_per_source)", s.activeBySource[ac.source], ac.source)
		}
		s.evictLocked(v, "evicted for a new connection from the same source")
	}
	if len(s.active) >= s.cfg.MaxConns {
		v := s.victimLocked("", now)
		if v == nil {
			return false, fmt.Sprintf("%d connections, all busy (max_connections)", len(s.active))
		}
		s.evictLocked(v, "evicted for a new connection")
	}
	s.active[ac.raw] = ac
	s.activeBySource[ac.source]++
	return true, ""
}

// victimLocked returns the established connection (of source, or of any
// source when it is "") that a new one may replace: first one with no open
// stream (the longest without), then one whose streams carried nothing
// for busyWindow (the longest quiet); among sources, the one holding most
// connections goes first. nil when every candidate is busy. Preconditions:
// s.mu held.
func (s *Server) victimLocked(source string, now time.Time) *activeConn {
	var best *activeConn
	var bestClass, bestShare int
	var bestAge time.Duration
	for _, ac := range s.active {
		if source != "" && ac.source != source {
			continue
		}
		sn := ac.track.snapshot()
		class, age := 0, now.Sub(sn.since)
		if sn.open > 0 {
			class, age = 1, now.Sub(sn.lastWork)
			if age < busyWindow {
				continue // doing work: never evicted
			}
		}
		share := s.activeBySource[ac.source]
		better := best == nil || class < bestClass ||
			class == bestClass && (share > bestShare || share == bestShare && age > bestAge)
		if better {
			best, bestClass, bestShare, bestAge = ac, class, share, age
		}
	}
	return best
}

// evictLocked closes ac to make room and forgets it. Preconditions: s.mu
// held.
func (s *Server) evictLocked(ac *activeConn, why string) {
	s.removeActiveLocked(ac)
	ac.ended.Store(&why)
	ac.raw.Close() // its relay ends, its handler logs and leaves
	s.drop.note("closed a connection to make room", "remote", ac.raw.RemoteAddr().String(), "reason", why,
		"max_connections", s.cfg.MaxConns, "max_connections_per_source", s.cfg.MaxConnsPerSource)
}

// removeActiveLocked forgets ac if it is still listed. Preconditions: s.mu
// held.
func (s *Server) removeActiveLocked(ac *activeConn) {
	if s.active[ac.raw] != ac {
		return
	}
	delete(s.active, ac.raw)
	if s.activeBySource[ac.source]--; s.activeBySource[ac.source] <= 0 {
		delete(s.activeBySource, ac.source)
	}
}

// removePending forgets el if it is still listed. Preconditions: s.mu held.
func (s *Server) removePending(el *list.Element) {
	pc := el.Value.(*pendingConn)
	if pc.raw != nil {
		s.pending.Remove(el)
		pc.raw = nil
		if s.pendingBySource[pc.source]--; s.pendingBySource[pc.source] <= 0 {
			delete(s.pendingBySource, pc.source)
		}
	}
}

// sourceOf is the source a connection counts against: its IP address, or
// for IPv6 its /64 (one host can have a whole /64 to itself).
func sourceOf(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return a.String()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// quietFor is how long an established connection must have moved no byte
// for shutdown to close it at once: gRPC clients keep idle connections open,
// and waiting ShutdownGrace for them would only delay the next computation.
const quietFor = 200 * time.Millisecond

func (s *Server) shutdown() {
	s.mu.Lock()
	s.closing = true
	for el := s.pending.Front(); el != nil; el = el.Next() {
		el.Value.(*pendingConn).raw.Close()
	}
	s.mu.Unlock()
	deadline := time.Now().Add(s.cfg.ShutdownGrace)
	for {
		now := time.Now()
		s.mu.Lock()
		for c, ac := range s.active {
			if now.After(deadline) || now.Sub(time.Unix(0, ac.last.Load())) >= quietFor {
				c.Close()
			}
		}
		n := len(s.active)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handle runs one client connection: handshake phase under a deadline, then
// one new agent connection and a byte copy both ways, its HTTP/2 frames
// followed by a connTracker.
func (s *Server) handle(ctx context.Context, raw net.Conn, el *list.Element) {
	defer raw.Close()
	remote := raw.RemoteAddr().String()
	start := time.Now()
	conn, peer, err := s.handshake(ctx, raw)
	handshake := time.Since(start)
	if err != nil {
		s.mu.Lock()
		evicted := el.Value.(*pendingConn).raw == nil
		s.removePending(el)
		s.mu.Unlock()
		if !evicted && ctx.Err() == nil {
			s.drop.note("dropped connection in its handshake", "remote", remote, "mode", s.cfg.Mode(), "err", err.Error(), "check", atls.FailedCheck(err))
		}
		return
	}
	ac := &activeConn{raw: raw, source: sourceOf(raw.RemoteAddr()), last: new(atomic.Int64)}
	ac.last.Store(time.Now().UnixNano())
	ac.track = newConnTracker(time.Now(), s.cfg.FirstRequestTimeout, s.cfg.StreamlessTimeout, func(reason string) {
		ac.ended.Store(&reason)
		raw.Close()
	})
	defer ac.track.stop()
	ok, refused := s.promote(ac, el)
	if !ok {
		if refused != "" {
			s.drop.note("refused connection", "remote", remote, "reason", refused)
		}
		return
	}
	defer func() {
		s.mu.Lock()
		s.removeActiveLocked(ac)
		s.mu.Unlock()
	}()
	dctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	backend, err := s.cfg.Backend(dctx)
	cancel()
	if err != nil {
		s.cfg.Log.Warn("dropped connection: agent unreachable", "remote", remote, "err", err.Error())
		return
	}
	defer backend.Close()
	if _, err := io.WriteString(backend, h2Preface); err != nil {
		s.cfg.Log.Warn("dropped connection: writing to agent", "remote", remote, "err", err.Error())
		return
	}
	r := ipc.RelayConns(newTrackedConn(conn, ac.track), backend, s.cfg.IdleTimeout, ac.last)
	end := why(r)
	if e := ac.ended.Load(); e != nil {
		end = *e
	}
	attrs := []any{"remote", remote, "mode", s.cfg.Mode(), "client_cert", peer,
		"handshake_ms", handshake.Milliseconds(), "bytes_in", r.Up, "bytes_out", r.Down,
		"duration_ms", time.Since(start).Milliseconds(), "end", end}
	if ac.track.opened() {
		s.cfg.Log.Info("connection closed", attrs...)
	} else {
		// A connection that never opened a stream may be one of a flood.
		s.drop.note("connection closed without a request", attrs...)
	}
}

// handshake does TLS, aTLS and reads the HTTP/2 preface before the deadline.
// peer is the subject of the client's certificate (mTLS, maTLS), or "".
func (s *Server) handshake(ctx context.Context, raw net.Conn) (conn net.Conn, peer string, err error) {
	raw.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	conn = raw
	if s.cfg.TLS != nil {
		tc := tls.Server(raw, s.cfg.TLS)
		if s.cfg.ATLS != nil {
			if err := atls.Serve(hctx, tc, s.cfg.ATLS); err != nil {
				return nil, "", err
			}
		} else if err := tc.HandshakeContext(hctx); err != nil {
			return nil, "", fmt.Errorf("TLS handshake: %w", err)
		}
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			peer = pc[0].Subject.String()
		}
		conn = tc
	}
	var p [len(h2Preface)]byte
	if _, err := io.ReadFull(conn, p[:]); err != nil {
		return nil, "", fmt.Errorf("reading the HTTP/2 preface: %w", err)
	}
	if !bytes.Equal(p[:], []byte(h2Preface)) {
		return nil, "", fmt.Errorf("client did not start HTTP/2 (first bytes %q)", p[:])
	}
	raw.SetDeadline(time.Time{})
	return conn, peer, nil
}

// why says how a relay ended, for the connection's log line.
func why(r ipc.Relay) string {
	switch {
	case r.Idle:
		return "idle timeout"
	case r.ClientErr != nil:
		return "client: " + r.ClientErr.Error()
	case r.ServerErr != nil:
		return "agent: " + r.ServerErr.Error()
	}
	return "closed"
}

// rateLimited logs at most perSecond lines a second and says how many it
// skipped: refused connections can come in floods.
type rateLimited struct {
	log       *slog.Logger
	perSecond int

	mu      sync.Mutex
	window  time.Time // guarded by mu
	n       int       // guarded by mu
	skipped int       // guarded by mu
}

func newRateLimited(log *slog.Logger, perSecond int) *rateLimited {
	return &rateLimited{log: log, perSecond: perSecond}
}

func (r *rateLimited) note(msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.window) >= time.Second {
		if r.skipped > 0 {
			args = append(args, "skipped_before", r.skipped)
		}
		r.window, r.n, r.skipped = now, 0, 0
	}
	r.n++
	if r.n > r.perSecond {
		r.skipped++
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	r.log.Info(msg, args...)
}
