package ingress

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
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
		// Real HTTP/2 traffic: a stream opened first (a connection without
		// one is closed at the first-request timeout), then DATA frames of
		// 16 KiB (SETTINGS_MAX_FRAME_SIZE's default, what gRPC sends).
		var buf []byte
		for len(buf) < 1<<20 {
			buf = append(buf, frameBytes(frameData, 0, 1, make([]byte, 16<<10-frameHeaderLen))...)
		}
		start := time.Now()
		opening := frameBytes(frameHeaders, 0x4, 1, make([]byte, 16))
		c.Write(append([]byte(h2Preface), opening...))
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
		if n != total+int64(len(h2Preface)+len(opening)) {
			t.Fatalf("%s: relayed %d bytes", mode.name, n)
		}
		testutil.Bench(mode.name, float64(total)/(1<<20)/el.Seconds(), "MiB/s", "client, ingress and sink in one process on this machine")
	}
}

// TestBenchIngressFlood measures a legitimate client's health check (a
// fresh connection from 127.0.0.1 each time: TCP, HTTP/2, one unary call)
// while a flood from 127.0.0.2 holds floodSize connections that sent only
// the preface and renews them as fast as it can, against the same check
// with no flood, interleaved round by round.
func TestBenchIngressFlood(t *testing.T) {
	testutil.BenchOn(t)
	addr := startIngress(t, Config{Backend: startBackend(t)})
	n := floodSize(t)
	var ref, flooded []time.Duration
	check := func(into *[]time.Duration) {
		for range 10 {
			d, err := healthFrom(t, "127.0.0.1", addr, floodBound)
			if err != nil {
				t.Fatalf("health check: %v", err)
			}
			*into = append(*into, d)
		}
	}
	for range 5 {
		check(&ref)
		f := startFlood(t, "127.0.0.2", addr, n)
		check(&flooded)
		f.stop()
	}
	p50 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	r, fl := p50(ref), p50(flooded)
	testutil.Bench("ingress_flood_health_ref_ms", r, "ms", "p50 of 50, no flood")
	testutil.Bench("ingress_flood_health_ms", fl, "ms", fmt.Sprintf("p50 of 50, during a flood of %d idle connections from one source; max %.2f ms", n, float64(flooded[len(flooded)-1].Microseconds())/1000))
	testutil.Bench("ingress_flood_health_ratio", fl/r, "x", "flood / no flood")
}
