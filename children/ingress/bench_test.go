package ingress

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
)

// TestBenchIngressRelay isolates the ingress's own cost: 512 MiB written by
// a client after the HTTP/2 preface, relayed to a reader that discards it on
// the far side of an ipc edge (no gRPC, no hashing), plaintext and TLS.
func TestBenchIngressRelay(t *testing.T) {
	testutil.BenchOn(t)
	const total = 512 << 20
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "agent")
	if err != nil {
		t.Fatal(err)
	}
	l := ipc.NewListener("agent")
	l.Add(srv)
	d := ipc.NewDialer("agent", cli)
	defer d.Close()
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, c)
			c.Close()
			got <- n
		}
	}()
	id, _ := atls.NewEphemeralIdentity()
	for _, mode := range []struct {
		name string
		tls  *tls.Config
	}{
		{"ingress_plain_relay_mib_s", nil},
		{"ingress_tls_relay_mib_s", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id}, NextProtos: []string{"h2"}}},
	} {
		addr := startIngress(t, Config{TLS: mode.tls, Backend: d.Dial})
		var c net.Conn
		c, err = net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if mode.tls != nil {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			if err := tc.HandshakeContext(context.Background()); err != nil {
				t.Fatal(err)
			}
			c = tc
		}
		buf := make([]byte, 1<<20)
		start := time.Now()
		io.WriteString(c, h2Preface)
		for range total / len(buf) {
			if _, err := c.Write(buf); err != nil {
				t.Fatal(err)
			}
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		n := <-got
		el := time.Since(start)
		c.Close()
		if n != total+int64(len(h2Preface)) {
			t.Fatalf("%s: relayed %d bytes", mode.name, n)
		}
		testutil.Bench(mode.name, float64(total)/(1<<20)/el.Seconds(), "MiB/s", "client, ingress and sink in one process on this machine")
	}
}
