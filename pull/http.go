package pull

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxResponseHeaderBytes bounds the response headers of every pull-mode
// server (source, redirect, object store, registry, KBS). net/http's default
// is 10 MiB, which a hostile server turns into far more of the agent's heap
// (a map entry and strings per line) than its memory limit allows; honest
// servers send a few KiB.
const MaxResponseHeaderBytes = 64 << 10

func (f *Fetcher) httpClient() *http.Client { return NewHTTPClient(f.cfg.Dial, f.cfg.RootCAs) }

// NewHTTPClient is the client every HTTP(S) request of pull mode uses (the
// KBS client too): connections through dial (the egress), TLS verified
// against roots (nil: the system's), no environment proxies, redirects
// followed (each through the egress again) but never from https to http.
func NewHTTPClient(dial func(ctx context.Context, network, addr string) (net.Conn, error), roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		DialContext:           dial,
		Proxy:                 nil,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		IdleConnTimeout:       30 * time.Second,
		MaxIdleConnsPerHost:   4,
		// Bytes are hashed as they are: no transparent gzip.
		DisableCompression: true,
		// Also HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE.
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
	}
	return &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("more than 10 redirects")
		}
		if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("redirect from https to %s (%s) refused", req.URL.Scheme, req.URL.Redacted())
		}
		return nil
	}}
}

func (f *Fetcher) blobSource(loc *Location) (blob, error) {
	switch loc.Kind {
	case KindHTTP, KindHTTPS:
		return &httpBlob{client: f.httpClient(), u: loc.HTTP}, nil
	case KindS3, KindGCS:
		return f.s3Blob(loc)
	}
	return nil, classErr(ErrInvalidSource, "kind %s is not a single object", loc.Kind)
}

type httpBlob struct {
	client *http.Client
	u      *url.URL
}

func (h *httpBlob) open(ctx context.Context, off int64, validator string) (io.ReadCloser, blobInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.u.String(), nil)
	if err != nil {
		return nil, blobInfo{}, classErr(ErrInvalidSource, "%v", err)
	}
	req.Header.Set("Accept-Encoding", "identity")
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
		if validator != "" {
			req.Header.Set("If-Range", validator) // the same version, or all of it
		}
	}
	res, err := h.client.Do(req)
	if err != nil {
		return nil, blobInfo{}, netErr(err)
	}
	info := blobInfo{size: -1, validator: res.Header.Get("ETag"), origin: h.u.Redacted()}
	if info.validator == "" || strings.HasPrefix(info.validator, "W/") {
		// A weak ETag cannot be used with If-Range; Last-Modified can.
		info.validator = res.Header.Get("Last-Modified")
	}
	if u := res.Request.URL; u.String() != h.u.String() {
		info.origin += " → " + u.Redacted()
	}
	switch res.StatusCode {
	case http.StatusOK:
		info.size = res.ContentLength
		info.restart = off > 0
		return res.Body, info, nil
	case http.StatusPartialContent:
		start, total, ok := parseContentRange(res.Header.Get("Content-Range"))
		if !ok || start != off {
			res.Body.Close()
			return nil, blobInfo{}, transient{fmt.Errorf("asked for bytes from %d, got Content-Range %q", off, res.Header.Get("Content-Range"))}
		}
		info.size = total
		return res.Body, info, nil
	case http.StatusRequestedRangeNotSatisfiable:
		res.Body.Close()
		return nil, blobInfo{}, errStartOver
	}
	io.Copy(io.Discard, io.LimitReader(res.Body, 4096))
	res.Body.Close()
	return nil, blobInfo{}, statusErr(res.StatusCode, res.Status)
}

// statusErr classes an HTTP status (of a source or an object store).
func statusErr(code int, text string) error {
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		return classErr(ErrNotFound, "HTTP %s", text)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return classErr(ErrForbidden, "HTTP %s", text)
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return transient{fmt.Errorf("HTTP %s", text)}
	}
	return fmt.Errorf("HTTP %s", text)
}

// netErr classes a transport error: an egress refusal keeps its class,
// anything else (DNS, connection, TLS, reset) is transient.
func netErr(err error) error {
	var c classed
	if errors.As(err, &c) && !isTransient(err) {
		return err
	}
	var ue *url.Error
	if errors.As(err, &ue) && strings.Contains(ue.Err.Error(), "redirect") {
		return classErr(ErrForbidden, "%v", ue.Err)
	}
	if s := err.Error(); strings.Contains(s, "server response headers exceeded") || strings.Contains(s, "response header list larger than") {
		// The server will not send fewer next time: not worth retrying.
		return classErr(ErrTooLarge, "response headers of more than %d bytes: %v", MaxResponseHeaderBytes, err)
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		// A server we cannot authenticate stays one: not worth retrying.
		return classed{ErrUnreachable, err}
	}
	if isTransient(err) {
		return err
	}
	return transient{err}
}

// parseContentRange reads "bytes start-end/total" (total may be "*").
func parseContentRange(s string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	a, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return start, total, true
}
