package egress

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/cvmd/cvmd/internal/testutil"
)

// TestBenchEgress: egress_mib_s (512 MiB through a CONNECT tunnel on
// loopback into a TCP sink) and egress_decision_us (allowlist, resolution by
// a stub and the SSRF guard, per request).
func TestBenchEgress(t *testing.T) {
	testutil.BenchOn(t)
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := sink.Accept()
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	_, port, _ := net.SplitHostPort(sink.Addr().String())
	h := startProxy(t, []string{"127.0.0.1:" + port}, nil, nil)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "CONNECT 127.0.0.1:"+port+" HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", res, err)
	}
	const total = 512 << 20
	buf := make([]byte, 1<<20)
	start := time.Now()
	for range total / len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	if n := <-got; n != total {
		t.Fatalf("sink got %d bytes", n)
	}
	testutil.Bench("egress_mib_s", float64(total)/(1<<20)/time.Since(start).Seconds(), "MiB/s", "CONNECT tunnel, loopback")
	c.Close()

	a, _ := ParseAllowlist([]string{"pypi.org", "*.pythonhosted.org:443", "10.0.0.0/8:5432", "example.com:8000-8100"})
	p := New(Config{Allow: a, Resolver: &stubResolver{addrs: map[string][]netip.Addr{"files.pythonhosted.org": {netip.MustParseAddr("151.101.0.223"), netip.MustParseAddr("2a04:4e42::223")}}}})
	ctx := context.Background()
	const n = 200000
	start = time.Now()
	for range n {
		if d := p.Decide(ctx, "algo", "files.pythonhosted.org", 443); !d.Allowed {
			t.Fatal(d.Reason)
		}
	}
	testutil.Bench("egress_decision_us", float64(time.Since(start).Nanoseconds())/n/1000, "us", "allowed name: allowlist, stub resolver, SSRF guard on 2 addresses")
}
