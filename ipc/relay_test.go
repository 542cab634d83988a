package ipc

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func streamPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	a, b, err := Socketpair(unix.SOCK_STREAM, "relay")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	ca, err := net.FileConn(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := net.FileConn(b)
	if err != nil {
		t.Fatal(err)
	}
	return ca, cb
}

// TestRelayCountsAndHalfCloses: bytes are counted each way, and a client
// that half-closes still gets the server's answer.
func TestRelayCountsAndHalfCloses(t *testing.T) {
	client, clientIn := streamPair(t) // test ↔ relay's client side
	serverIn, server := streamPair(t) // relay's server side ↔ test
	done := make(chan Relay, 1)
	go func() { done <- RelayConns(clientIn, serverIn, 5*time.Second, nil) }()

	client.Write([]byte("request"))
	client.(*net.UnixConn).CloseWrite()
	got, _ := io.ReadAll(server) // ends at the relayed half-close
	if string(got) != "request" {
		t.Fatalf("server read %q", got)
	}
	server.Write([]byte("the answer"))
	server.(*net.UnixConn).CloseWrite()
	ans, _ := io.ReadAll(client)
	if string(ans) != "the answer" {
		t.Fatalf("client read %q after half-closing", ans)
	}
	r := <-done
	if r.Up != 7 || r.Down != 10 || r.Idle || r.ClientErr != nil || r.ServerErr != nil {
		t.Fatalf("relay = %+v", r)
	}
	client.Close()
	server.Close()
}

// TestRelayIdleTimeout: nothing moving for the idle time ends the relay and
// says so.
func TestRelayIdleTimeout(t *testing.T) {
	client, clientIn := streamPair(t)
	serverIn, server := streamPair(t)
	defer client.Close()
	defer server.Close()
	start := time.Now()
	r := RelayConns(clientIn, serverIn, 100*time.Millisecond, nil)
	if !r.Idle {
		t.Fatalf("relay = %+v, want idle", r)
	}
	if el := time.Since(start); el < 100*time.Millisecond || el > 5*time.Second {
		t.Fatalf("idle relay ended after %v", el)
	}
}
