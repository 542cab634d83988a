package pulltest

import (
	"context"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/children/egress"
	"github.com/cvmd/cvmd/ipc"
)

// Egress serves the real egress proxy over an ipc edge, as the egress child
// serves the agent's "from:agent" edge: allow is the operator's allowlist
// (loopback test servers need IP entries: the SSRF guard refuses loopback
// otherwise), grant the computation's pull grant for client "agent" (nil:
// none). It returns the proxy and the agent's end of the edge.
func Egress(t testing.TB, allow, grant []string) (*egress.Proxy, *ipc.Dialer) {
	t.Helper()
	p, cli := EgressEdge(t, allow, grant)
	d := ipc.NewDialer("egress", cli)
	t.Cleanup(func() { d.Close() })
	return p, d
}

// EgressEdge is Egress for an agent in another process: it returns the
// agent's end of the edge as a file to pass as its "to:egress" fd.
func EgressEdge(t testing.TB, allow, grant []string) (*egress.Proxy, *os.File) {
	t.Helper()
	a, err := egress.ParseAllowlist(allow)
	if err != nil {
		t.Fatal(err)
	}
	p := egress.New(egress.Config{Allow: a})
	if grant != nil {
		g, err := egress.ParseGrant(grant)
		if err != nil {
			t.Fatal(err)
		}
		p.SetGrant("agent", g)
	}
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "egress")
	if err != nil {
		t.Fatal(err)
	}
	l := ipc.NewListener("egress")
	l.Add(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Serve(ctx, l, "agent"); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p, cli
}
