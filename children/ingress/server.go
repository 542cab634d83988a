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
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 10 * time.Minute
	DefaultMaxConns         = 256
	DefaultMaxHandshakes    = 128
	DefaultShutdownGrace    = 5 * time.Second
)

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

	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	MaxConns         int
	MaxHandshakes    int
	ShutdownGrace    time.Duration
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

	mu      sync.Mutex
	pending *list.List                 // guarded by mu; *pendingConn, oldest first
	active  map[net.Conn]*atomic.Int64 // guarded by mu; raw conns being proxied → last activity (unix ns)
	closing bool                       // guarded by mu
}

type pendingConn struct{ raw net.Conn }

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, drop: newRateLimited(cfg.Log, 10), pending: list.New(), active: map[net.Conn]*atomic.Int64{}}
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

// admit registers raw as in its handshake, dropping the oldest such
// connection when MaxHandshakes are already there: a flood of idle
// connections then pushes out its own oldest members, not the newest client.
func (s *Server) admit(raw net.Conn) (*list.Element, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, false
	}
	if s.pending.Len() >= s.cfg.MaxHandshakes {
		old := s.pending.Remove(s.pending.Front()).(*pendingConn)
		raw := old.raw
		old.raw = nil // marks it evicted for its handler
		raw.Close()   // its handler sees the error and leaves
		s.drop.note("dropped the oldest connection still in its handshake", "remote", raw.RemoteAddr().String(), "max_handshakes", s.cfg.MaxHandshakes)
	}
	return s.pending.PushBack(&pendingConn{raw: raw}), true
}

// promote moves a connection from pending to active; false when it was
// evicted meanwhile or MaxConns is reached.
func (s *Server) promote(raw net.Conn, el *list.Element, last *atomic.Int64) (ok bool, full bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el.Value.(*pendingConn).raw == nil || s.closing {
		return false, false
	}
	s.removePending(el)
	if len(s.active) >= s.cfg.MaxConns {
		return false, true
	}
	s.active[raw] = last
	return true, false
}

// removePending forgets el if it is still listed. Preconditions: s.mu held.
func (s *Server) removePending(el *list.Element) {
	pc := el.Value.(*pendingConn)
	if pc.raw != nil {
		s.pending.Remove(el)
		pc.raw = nil
	}
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
		for c, last := range s.active {
			if now.After(deadline) || now.Sub(time.Unix(0, last.Load())) >= quietFor {
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
// one new agent connection and a byte copy both ways.
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
	last := new(atomic.Int64)
	last.Store(time.Now().UnixNano())
	ok, full := s.promote(raw, el, last)
	if !ok {
		if full {
			s.drop.note("refused connection: too many established", "remote", remote, "max_connections", s.cfg.MaxConns)
		}
		return
	}
	defer func() {
		s.mu.Lock()
		delete(s.active, raw)
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
	r := ipc.RelayConns(conn, backend, s.cfg.IdleTimeout, last)
	s.cfg.Log.Info("connection closed", "remote", remote, "mode", s.cfg.Mode(), "client_cert", peer,
		"handshake_ms", handshake.Milliseconds(), "bytes_in", r.Up, "bytes_out", r.Down,
		"duration_ms", time.Since(start).Milliseconds(), "end", why(r))
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
