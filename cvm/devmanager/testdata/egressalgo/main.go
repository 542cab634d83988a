// Command egressalgo is a test algorithm: it fetches each URL given as an
// argument through the proxy named by HTTP_PROXY (explicitly, since NO_PROXY
// covers loopback) and writes "<url> <status> <body>" lines to
// results/result.txt.
package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func main() {
	proxy, err := url.Parse(os.Getenv("HTTP_PROXY"))
	if err != nil || proxy.Host == "" {
		fmt.Fprintln(os.Stderr, "no HTTP_PROXY")
		os.Exit(1)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
	var out strings.Builder
	for _, u := range os.Args[1:] {
		resp, err := c.Get(u)
		if err != nil {
			fmt.Fprintf(&out, "%s error %v\n", u, err)
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		fmt.Fprintf(&out, "%s %d %s\n", u, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	os.MkdirAll("results", 0o755)
	if err := os.WriteFile("results/result.txt", []byte(out.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
