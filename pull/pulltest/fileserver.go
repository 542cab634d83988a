package pulltest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FileServer is an HTTPS (or HTTP) server of files on disk with range
// support (http.ServeContent, strong ETags), that can die in the middle of
// a body and come back on the same port.
type FileServer struct {
	t    testing.TB
	ca   *CA // nil: plain HTTP
	Addr string

	mu       sync.Mutex
	files    map[string]string // URL path → file; guarded by mu
	srv      *http.Server      // guarded by mu
	dieAfter int64             // guarded by mu; bytes of body before the server dies; 0 = never
	died     chan struct{}     // guarded by mu; closed when it died
	// Requests counts every request; Ranges the ones with a Range header.
	Requests, Ranges atomic.Int64
	// LastRange is the last Range header seen.
	lastRange atomic.Value
	Status    map[string]int    // URL path → forced status (403, 404, ...); set before use
	Redirects map[string]string // URL path → where a 302 sends it; set before use
}

// NewFileServer starts a server on a free loopback port; ca nil means HTTP.
func NewFileServer(t testing.TB, ca *CA) *FileServer {
	fs := &FileServer{t: t, ca: ca, files: map[string]string{}, Status: map[string]int{}, Redirects: map[string]string{}}
	fs.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	fs.Start()
	t.Cleanup(fs.Stop)
	return fs
}

// URL of path on this server.
func (fs *FileServer) URL(path string) string {
	scheme := "http"
	if fs.ca != nil {
		scheme = "https"
	}
	return scheme + "://" + fs.Addr + path
}

// Add serves file at path.
func (fs *FileServer) Add(path, file string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.files[path] = file
}

// LastRange is the Range header of the latest request that had one.
func (fs *FileServer) LastRange() string {
	s, _ := fs.lastRange.Load().(string)
	return s
}

// DieAfter makes the server stop (listener and every connection) once it
// has sent n more body bytes; the returned channel is closed then.
func (fs *FileServer) DieAfter(n int64) <-chan struct{} {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.dieAfter = n
	fs.died = make(chan struct{})
	return fs.died
}

// Start (re)starts serving on Addr.
func (fs *FileServer) Start() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ln, err = net.Listen("tcp", fs.Addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the old listener's port is being released
	}
	if err != nil {
		fs.t.Fatalf("pulltest: listening on %s: %v", fs.Addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(fs.serve), ReadHeaderTimeout: 10 * time.Second}
	if fs.ca != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{fs.ca.Server}}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	fs.srv = srv
	go srv.Serve(ln)
}

// Stop closes the listener and every connection at once.
func (fs *FileServer) Stop() {
	fs.mu.Lock()
	srv := fs.srv
	fs.srv = nil
	fs.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (fs *FileServer) serve(w http.ResponseWriter, r *http.Request) {
	fs.Requests.Add(1)
	if rg := r.Header.Get("Range"); rg != "" {
		fs.Ranges.Add(1)
		fs.lastRange.Store(rg)
	}
	if to := fs.Redirects[r.URL.Path]; to != "" {
		http.Redirect(w, r, to, http.StatusFound)
		return
	}
	if code := fs.Status[r.URL.Path]; code != 0 {
		http.Error(w, http.StatusText(code), code)
		return
	}
	fs.mu.Lock()
	file, ok := fs.files[r.URL.Path]
	fs.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(file)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
	http.ServeContent(&dyingWriter{ResponseWriter: w, fs: fs}, r, "", st.ModTime(), f)
}

// dyingWriter counts body bytes and kills the server at the set point.
type dyingWriter struct {
	http.ResponseWriter
	fs *FileServer
}

var errDied = errors.New("pulltest: server died")

func (d *dyingWriter) Write(b []byte) (int, error) {
	d.fs.mu.Lock()
	limit := d.fs.dieAfter
	if limit > 0 && int64(len(b)) >= limit {
		b = b[:limit]
		d.fs.dieAfter = 0
		died := d.fs.died
		d.fs.mu.Unlock()
		n, _ := d.ResponseWriter.Write(b)
		if fl, ok := d.ResponseWriter.(http.Flusher); ok {
			fl.Flush()
		}
		go func() { d.fs.Stop(); close(died) }()
		return n, errDied
	}
	if limit > 0 {
		d.fs.dieAfter -= int64(len(b))
	}
	d.fs.mu.Unlock()
	return d.ResponseWriter.Write(b)
}

var _ io.Writer = (*dyingWriter)(nil)
