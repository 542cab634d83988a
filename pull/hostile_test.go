package pull_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/pull"
	"github.com/cvmd/cvmd/pull/pulltest"
)

// hostileServer is an HTTPS server on loopback (HTTP/1.1 only) that reads
// each request and then lets answer write whatever it likes on the raw
// connection: the replies no well-behaved server sends.
type hostileServer struct {
	Addr     string
	Requests atomic.Int64
}

func newHostileServer(t *testing.T, ca *pulltest.CA, answer func(w *bufio.Writer)) *hostileServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Server}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &hostileServer{Addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				s.Requests.Add(1)
				c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				w := bufio.NewWriterSize(c, 64<<10)
				answer(w)
				w.Flush()
			}()
		}
	}()
	return s
}

func (s *hostileServer) URL(path string) string { return "https://" + s.Addr + path }

// TestHostileSourceServers: a source that answers with what no honest
// server sends fails the fetch with a clear class, within bounded memory
// and without endless retries.
func TestHostileSourceServers(t *testing.T) {
	ca := pulltest.NewCA(t)
	body := []byte("a,b\n1,2\n")
	sum := digest.Sum(body)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte{0}, 8<<20))
	zw.Close()
	cases := []struct {
		name     string
		answer   func(w *bufio.Writer)
		hash     [32]byte
		maxBytes int64
		class    error
		message  string
		requests int64 // at most this many: a server that will not change its mind is not asked again and again
	}{
		{"response headers without end", func(w *bufio.Writer) {
			w.WriteString("HTTP/1.1 200 OK\r\n")
			pad := strings.Repeat("x", 1000)
			for i := 0; i < 20000; i++ { // 20 MB, more than net/http's own 10 MiB default
				if _, err := fmt.Fprintf(w, "X-Pad-%d: %s\r\n", i, pad); err != nil {
					return
				}
			}
			w.WriteString("Content-Length: 8\r\n\r\na,b\n1,2\n")
		}, sum, 0, pull.ErrTooLarge, "response headers", 1},
		{"one 2 MiB header, then the right body", func(w *bufio.Writer) {
			fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: %d\r\n\r\n%s", strings.Repeat("y", 2<<20), len(body), body)
		}, sum, 0, pull.ErrTooLarge, "response headers", 1},
		{"a body without end", func(w *bufio.Writer) {
			w.WriteString("HTTP/1.1 200 OK\r\n\r\n")
			chunk := make([]byte, 64<<10)
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, sum, 1 << 20, pull.ErrTooLarge, "more than 1048576 bytes", 1},
		{"a Content-Length beyond the limit", func(w *bufio.Writer) {
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
		}, sum, 1 << 20, pull.ErrTooLarge, "1099511627776 bytes", 1},
		{"a gzip bomb is hashed as sent, never inflated", func(w *bufio.Writer) {
			fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n", gz.Len())
			w.Write(gz.Bytes())
		}, sum, 1 << 20, pull.ErrHashMismatch, "hash mismatch", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := newHostileServer(t, ca, c.answer)
			_, dial := egressFor(t, []string{srv.Addr}, nil)
			f, err := pull.New(pull.Config{Dir: filepath.Join(t.TempDir(), "staging"), Dial: dial, RootCAs: ca.Pool, MaxBytes: c.maxBytes,
				Retry: pull.Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond, Attempts: 3}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err = f.Fetch(ctx, pull.Resource{What: "dataset 0", Source: manifest.ResourceSource{URL: srv.URL("/d.csv")}, Hash: c.hash})
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.message) {
				t.Fatalf("got %v, want %v with %q", err, c.class, c.message)
			}
			if n := srv.Requests.Load(); n > c.requests {
				t.Errorf("the server was asked %d times, want at most %d", n, c.requests)
			}
		})
	}
}
