// Package egress is the egress child (`cvmd egress`): the only way out of
// the VM for the algorithm and the agent, and the only child with the VM's
// network namespace. It is an HTTP CONNECT and absolute-URI HTTP forward
// proxy with an allowlist (default deny) and an SSRF guard: names are
// resolved once, every address is classified, and the checked address is
// the one dialed.
//
// It accepts on fds the supervisor hands it: "proxy:<client>" (a TCP
// listening socket made inside the client's network namespace, e.g.
// 127.0.0.1:3128 in an algorithm sandbox, or an ipc edge), more of them
// later through rewiring, and the "from:<client>" edges of children without
// a network (the agent). The client identity, and so the policy, is the name
// of the fd a connection arrived on, never anything the client says.
//
// egress does not terminate or inspect TLS inside CONNECT tunnels, does not
// cache, and does not authenticate clients beyond the fd they came through.
// It imports ipc and proto; only cmd/cvmd imports it.
package egress

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/config"
)

// ConfigFromSettings validates s and builds the Proxy config (without
// Resolver, Dial and Log).
func ConfigFromSettings(s *config.EgressSettings) (*Config, error) {
	allow, err := ParseAllowlist(s.GetAllow())
	if err != nil {
		return nil, err
	}
	cfg := &Config{
		Allow:          allow,
		Clients:        map[string]Allowlist{},
		AllowPublic:    s.GetAllowPublic(),
		DNSTimeout:     ms(s.GetDnsTimeoutMs()),
		ConnectTimeout: ms(s.GetConnectTimeoutMs()),
		IdleTimeout:    ms(s.GetIdleTimeoutMs()),
		HeaderTimeout:  ms(s.GetHeaderTimeoutMs()),
		MaxTunnels:     int(s.GetMaxTunnelsPerClient()),
	}
	cfg.Grants = map[string]Allowlist{}
	for client, l := range s.GetGrants() {
		g, err := ParseGrant(l.GetAllow())
		if err != nil {
			return nil, fmt.Errorf("egress: grant of %q: %w", client, err)
		}
		cfg.Grants[client] = g
	}
	for name, l := range s.GetClients() {
		a, err := ParseAllowlist(l.GetAllow())
		if err != nil {
			return nil, fmt.Errorf("egress: client %q: %w", name, err)
		}
		cfg.Clients[name] = a
	}
	return cfg, nil
}

func ms(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }

// Main runs the egress child.
func Main(ctx context.Context, env *child.Env) error {
	s := &config.EgressSettings{}
	if err := env.Settings(s); err != nil {
		return err
	}
	cfg, err := ConfigFromSettings(s)
	if err != nil {
		return err
	}
	cfg.Log = env.Log
	p := New(*cfg)
	env.HandleCommand(&config.EgressSetAllowlist{}, func(_ context.Context, body proto.Message) (proto.Message, error) {
		c := body.(*config.EgressSetAllowlist)
		a, err := ParseAllowlist(c.GetAllow())
		if err != nil {
			return nil, err
		}
		p.SetComputationAllowlist(c.GetClient(), a)
		env.Log.Info("egress allowlist set", "client", c.GetClient(), "entries", strings.Join(c.GetAllow(), " "))
		return nil, nil
	})

	env.HandleCommand(&config.EgressSetGrant{}, func(_ context.Context, body proto.Message) (proto.Message, error) {
		c := body.(*config.EgressSetGrant)
		g, err := ParseGrant(c.GetEntries())
		if err != nil {
			return nil, err
		}
		p.SetGrant(c.GetClient(), g)
		env.Log.Info("egress grant set", "client", c.GetClient(), "computation_id", c.GetComputationId(), "entries", strings.Join(c.GetEntries(), " "))
		return nil, nil
	})
	srv := &servers{ctx: ctx, p: p, env: env, cancels: map[string]*context.CancelFunc{}}
	var names []string
	for name := range env.Config.GetFds() {
		if strings.HasPrefix(name, "proxy:") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		f, err := env.File(name)
		if err != nil {
			return err
		}
		if err := srv.add(name, f); err != nil {
			srv.stop()
			return err
		}
	}
	env.OnRewire("proxy:", func(name string, f *os.File) {
		if err := srv.add(name, f); err != nil {
			env.Log.Warn("egress: rewired fd refused", "fd", name, "err", err.Error())
		}
	})
	edgeClient := edgeIdentity(env.Config.GetFds())
	ln := env.Listener()
	srv.wg.Go(func() {
		if err := p.Serve(ctx, ln, edgeClient); err != nil {
			env.Log.Warn("egress: serving edges", "err", err.Error())
		}
	})
	if err := env.Ready(); err != nil {
		srv.stop()
		return err
	}
	env.Log.Info("egress serving", "listeners", strings.Join(names, " "), "edge_client", edgeClient, "allow", strings.Join(s.GetAllow(), " "), "allow_public", s.GetAllowPublic())
	<-ctx.Done()
	srv.stop()
	return nil
}

// edgeIdentity names the client of connections arriving over "from:" edges:
// env.Listener merges them, so they share one identity: the client's name
// when only one is wired (the agent), else "edges".
func edgeIdentity(fds map[string]int32) string {
	var from []string
	for name := range fds {
		if c, ok := strings.CutPrefix(name, "from:"); ok {
			from = append(from, c)
		}
	}
	if len(from) == 1 {
		return from[0]
	}
	return "edges"
}

// servers owns one Serve goroutine per "proxy:" fd.
type servers struct {
	ctx context.Context
	p   *Proxy
	env *child.Env
	wg  sync.WaitGroup

	mu      sync.Mutex
	cancels map[string]*context.CancelFunc // guarded by mu; by fd name
	stopped bool                           // guarded by mu
}

// add serves f under name, replacing (and stopping) an earlier fd of that
// name: the client's namespace was replaced.
func (s *servers) add(name string, f *os.File) error {
	client := strings.TrimPrefix(name, "proxy:")
	ln, err := listenerOf(name, f)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		ln.Close()
		return nil
	}
	if old := s.cancels[name]; old != nil {
		(*old)()
	}
	ctx, cancel := context.WithCancel(s.ctx)
	token := &cancel
	s.cancels[name] = token
	s.wg.Go(func() {
		// A sandbox's listener ends when the supervisor shuts it down as the
		// sandbox ends: that is the normal way out, not a failure.
		err := s.p.Serve(ctx, ln, client)
		s.env.Log.Info("egress: listener closed", "fd", name, "err", fmt.Sprint(err))
		s.mu.Lock()
		if s.cancels[name] == token {
			delete(s.cancels, name)
		}
		s.mu.Unlock()
		cancel()
	})
	return nil
}

func (s *servers) stop() {
	s.mu.Lock()
	s.stopped = true
	for _, c := range s.cancels {
		(*c)()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// listenerOf turns a passed fd into a listener: a listening stream socket
// (TCP made in the client's namespace) or an ipc edge (SOCK_SEQPACKET). It
// takes ownership of f.
func listenerOf(name string, f *os.File) (net.Listener, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("egress: fd %q: %w", name, err)
	}
	var typ, acc int
	var serr error
	rc.Control(func(fd uintptr) {
		if typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); serr == nil {
			acc, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		}
	})
	if serr != nil {
		f.Close()
		return nil, fmt.Errorf("egress: fd %q is not a socket: %w", name, serr)
	}
	switch {
	case typ == unix.SOCK_STREAM && acc == 1:
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("egress: fd %q: %w", name, err)
		}
		return ln, nil
	case typ == unix.SOCK_SEQPACKET:
		l := ipc.NewListener(name)
		l.Add(f)
		return l, nil
	}
	f.Close()
	return nil, fmt.Errorf("egress: fd %q is neither a listening stream socket nor an edge", name)
}
