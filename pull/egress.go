package pull

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// EgressDialer opens TCP connections through the egress child: each Dial
// opens a new connection over the agent's "to:egress" edge (Edge) and asks
// for a CONNECT tunnel to addr. The egress decides (allowlist, the
// computation's grant, the SSRF guard on every DNS answer) and dials; the
// agent itself has no network.
type EgressDialer struct {
	// Edge opens one connection to the egress proxy. Required.
	Edge func(ctx context.Context) (net.Conn, error)
	// Timeout bounds the CONNECT exchange; 0 means 30 s.
	Timeout time.Duration
}

// EgressError is the egress's refusal of a tunnel.
type EgressError struct {
	Target string
	Status int    // the proxy's HTTP status
	Reason string // its body: "egress: denied: host x:443 is not in the allowlist"
}

func (e *EgressError) Error() string {
	return fmt.Sprintf("egress refused %s: %d %s", e.Target, e.Status, e.Reason)
}

// DialContext has net.Dialer's shape, for http.Transport and the SDKs.
func (d *EgressDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("pull: egress carries tcp, not %s", network)
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	// An edge whose egress is gone waits for the supervisor's rewiring: not
	// forever.
	ectx, cancel := context.WithTimeout(ctx, timeout)
	c, err := d.Edge(ectx)
	cancel()
	if err != nil {
		return nil, transient{fmt.Errorf("connecting to the egress: %w", err)}
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, transient{fmt.Errorf("asking the egress for %s: %w", addr, err)}
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, transient{fmt.Errorf("reading the egress's answer for %s: %w", addr, err)}
	}
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		c.Close()
		e := &EgressError{Target: addr, Status: res.StatusCode, Reason: strings.TrimSpace(string(body))}
		switch res.StatusCode {
		case http.StatusForbidden, http.StatusBadRequest:
			return nil, classed{ErrForbidden, e}
		case http.StatusBadGateway:
			return nil, transient{classed{ErrUnreachable, e}} // the egress could not reach it
		default:
			return nil, transient{e}
		}
	}
	c.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// bufferedConn reads what the CONNECT answer's reader already holds first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
