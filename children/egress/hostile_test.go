package egress

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvmd/cvmd/internal/testutil"
)

// TestForwardBoundsResponseHead: an upstream that answers a forwarded
// request with headers that never end gets a 502, and the proxy stops
// reading it at its head bound instead of holding the whole head in memory.
func TestForwardBoundsResponseHead(t *testing.T) {
	testutil.CheckLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var sent atomic.Int64
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		n, _ := io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		sent.Add(int64(n))
		line := strings.Repeat("x", 1000)
		for i := 0; i < 20000; i++ { // 20 MB of headers
			n, err := fmt.Fprintf(c, "X-Pad-%d: %s\r\n", i, line)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
		io.WriteString(c, "Content-Length: 2\r\n\r\nok")
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	h := startProxy(t, []string{"127.0.0.1:" + port}, nil, nil)
	res, _, _ := rawRequest(t, h.addr, "GET http://127.0.0.1:"+port+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "response headers exceed") {
		t.Fatalf("%d %q, want 502 naming the header bound", res.StatusCode, b)
	}
	<-served
	// What the upstream got to write is the bound plus the sockets' buffers, not 20 MB.
	if n := sent.Load(); n > 19<<20 {
		t.Errorf("the upstream wrote %d bytes before the proxy stopped reading", n)
	}
}
