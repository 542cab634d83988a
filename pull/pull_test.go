package pull_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/children/egress"
	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/pull"
	"github.com/cvmd/cvmd/pull/cipherfile"
	"github.com/cvmd/cvmd/pull/pulltest"
)

// egressFor starts the real egress proxy on loopback, as the agent's
// egress child would serve it, with the operator's allowlist allow and a
// per-computation grant for client "agent"; it returns the proxy and a
// dialer that goes through it.
func egressFor(t testing.TB, allow []string, grant []string) (*egress.Proxy, func(ctx context.Context, network, addr string) (net.Conn, error)) {
	t.Helper()
	p, d := pulltest.Egress(t, allow, grant)
	return p, (&pull.EgressDialer{Edge: d.Dial}).DialContext
}

type fixedKey []byte

func (k fixedKey) Key(ctx context.Context, url, path string) ([]byte, error) {
	return bytes.Clone(k), nil
}

func writeRandom(t testing.TB, p string, n int64) [32]byte {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	h := digest.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

type env struct {
	t    *testing.T
	ca   *pulltest.CA
	srv  *pulltest.FileServer
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	dir  string
}

func newEnv(t *testing.T) *env {
	ca := pulltest.NewCA(t)
	srv := pulltest.NewFileServer(t, ca)
	_, dial := egressFor(t, []string{srv.Addr}, nil)
	return &env{t: t, ca: ca, srv: srv, dial: dial, dir: t.TempDir()}
}

func (e *env) fetcher(mod ...func(*pull.Config)) *pull.Fetcher {
	cfg := pull.Config{Dir: filepath.Join(e.dir, "staging"), Dial: e.dial, RootCAs: e.ca.Pool,
		Retry: pull.Backoff{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond, Attempts: 20},
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, m := range mod {
		m(&cfg)
	}
	f, err := pull.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, _ := os.ReadFile(a)
	y, _ := os.ReadFile(b)
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%d and %d bytes)", a, b, len(x), len(y))
	}
}

func TestFetchHTTPS(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "iris.csv")
	sum := writeRandom(t, src, 5<<20+3)
	e.srv.Add("/data/iris.csv", src)
	res, err := e.fetcher().Fetch(context.Background(), pull.Resource{What: "dataset 0",
		Source: manifest.ResourceSource{Type: "https", URL: e.srv.URL("/data/iris.csv")}, Hash: sum})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, res.Path, src)
	if res.Name != "iris.csv" || res.Size != 5<<20+3 || res.ResumedAt != 0 {
		t.Fatalf("result %+v", res)
	}
}

func TestFetchEncrypted(t *testing.T) {
	e := newEnv(t)
	plain := filepath.Join(e.dir, "model.bin")
	sum := writeRandom(t, plain, 3<<20+11)
	key := bytes.Repeat([]byte{0x42}, 32)
	sealed := filepath.Join(e.dir, "model.bin.enc")
	seal(t, plain, sealed, key)
	e.srv.Add("/model.bin.enc", sealed)
	r := pull.Resource{What: "algorithm", Hash: sum, KBS: &manifest.KBSConfig{URL: "https://kbs.invalid", Enabled: true},
		Source: manifest.ResourceSource{URL: e.srv.URL("/model.bin.enc"), Encrypted: true, KBSResourcePath: "default/key/model"}}
	res, err := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(key) }).Fetch(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, res.Path, plain)
	if !res.Encrypted {
		t.Fatal("not marked encrypted")
	}

	t.Run("wrong key", func(t *testing.T) {
		_, err := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(bytes.Repeat([]byte{1}, 32)) }).Fetch(context.Background(), r)
		if !errors.Is(err, pull.ErrDecrypt) || !strings.Contains(err.Error(), "algorithm from https://") {
			t.Fatalf("got %v", err)
		}
		assertStagingEmpty(t, filepath.Join(e.dir, "staging"))
	})
	t.Run("no KBS declared", func(t *testing.T) {
		r2 := r
		r2.KBS = nil
		_, err := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(key) }).Fetch(context.Background(), r2)
		if !errors.Is(err, pull.ErrInvalidSource) {
			t.Fatalf("got %v", err)
		}
	})
}

func seal(t testing.TB, plain, sealed string, key []byte) {
	t.Helper()
	in, err := os.Open(plain)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(sealed)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 12)
	rand.Read(nonce)
	if _, err := cipherfile.SealStream(out, in, key, nonce); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

func assertStagingEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		t.Errorf("left in staging: %s", e.Name())
	}
}

func TestFetchRefusals(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "x.csv")
	sum := writeRandom(t, src, 1000)
	e.srv.Add("/x.csv", src)
	e.srv.Status["/secret.csv"] = 403
	other := pulltest.NewFileServer(t, e.ca) // not allowed by the egress
	other.Add("/x.csv", src)
	cases := []struct {
		name    string
		typ     string
		url     string
		hash    [32]byte
		class   error
		message string
	}{
		{"hash mismatch", "", e.srv.URL("/x.csv"), [32]byte{1}, pull.ErrHashMismatch, "expected 01000000"},
		{"not found", "", e.srv.URL("/nothing.csv"), sum, pull.ErrNotFound, "404"},
		{"forbidden", "", e.srv.URL("/secret.csv"), sum, pull.ErrForbidden, "403"},
		{"egress refuses an unlisted loopback host", "", other.URL("/x.csv"), sum, pull.ErrForbidden, "address 127.0.0.1 is loopback"},
		{"type disagrees with the URL", "s3", e.srv.URL("/x.csv"), sum, pull.ErrInvalidSource, `source type "s3" but the URL`},
		{"unknown type", "ftp", e.srv.URL("/x.csv"), sum, pull.ErrInvalidSource, `source type "ftp"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := e.fetcher(func(cfg *pull.Config) {
				cfg.Retry = pull.Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond, Attempts: 2}
			})
			_, err := f.Fetch(context.Background(), pull.Resource{What: `dataset "x.csv"`, Source: manifest.ResourceSource{Type: c.typ, URL: c.url}, Hash: c.hash})
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.message) || !strings.Contains(err.Error(), `dataset "x.csv" from `+c.url) {
				t.Fatalf("got %v, want %v with %q", err, c.class, c.message)
			}
			assertStagingEmpty(t, filepath.Join(e.dir, "staging"))
		})
	}
}

// TestServerDiesMidDownload: the server goes away after 3 MiB and comes
// back; the fetch waits, resumes with a range request and gets every byte.
func TestServerDiesMidDownload(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "big.dat")
	sum := writeRandom(t, src, 12<<20)
	e.srv.Add("/big.dat", src)
	died := e.srv.DieAfter(3 << 20)
	go func() {
		<-died
		time.Sleep(300 * time.Millisecond) // a real outage: several retries fail first
		e.srv.Start()
	}()
	res, err := e.fetcher().Fetch(context.Background(), pull.Resource{What: "dataset 0", Source: manifest.ResourceSource{URL: e.srv.URL("/big.dat")}, Hash: sum})
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, res.Path, src)
	if e.srv.Ranges.Load() == 0 || !strings.HasPrefix(e.srv.LastRange(), "bytes=") || res.Attempts < 2 {
		t.Fatalf("no resumption: ranges %d (%q), attempts %d", e.srv.Ranges.Load(), e.srv.LastRange(), res.Attempts)
	}
	if res.Downloaded >= 12<<20+1<<20 {
		t.Fatalf("downloaded %d bytes for 12 MiB: the resumption started over", res.Downloaded)
	}
}

// TestResumeAfterCrash: a fetch stopped half-way (as when the agent is
// killed) leaves its partial bytes; a new Fetcher on the same staging dir
// asks only for the rest.
func TestResumeAfterCrash(t *testing.T) {
	e := newEnv(t)
	src := filepath.Join(e.dir, "big.dat")
	sum := writeRandom(t, src, 16<<20)
	e.srv.Add("/big.dat", src)
	key := bytes.Repeat([]byte{7}, 32)
	sealed := filepath.Join(e.dir, "big.enc")
	seal(t, src, sealed, key)
	e.srv.Add("/big.enc", sealed)
	for _, enc := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", enc), func(t *testing.T) {
			r := pull.Resource{What: "dataset 0", Source: manifest.ResourceSource{URL: e.srv.URL("/big.dat")}, Hash: sum}
			if enc {
				r.Source = manifest.ResourceSource{URL: e.srv.URL("/big.enc"), Encrypted: true, KBSResourcePath: "a/b/c"}
				r.KBS = &manifest.KBSConfig{URL: "https://kbs.invalid", Enabled: true}
			}
			died := e.srv.DieAfter(5 << 20)
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				// "Kill" the fetch while the server is down, once the bytes it
				// sent are on disk.
				<-died
				for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					parts, _ := filepath.Glob(filepath.Join(e.dir, "staging", "*.part"))
					if len(parts) == 1 {
						if st, err := os.Stat(parts[0]); err == nil && st.Size() >= 5<<20 {
							break
						}
					}
				}
				cancel()
			}()
			_, err := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(key) }).Fetch(ctx, r)
			if err == nil {
				t.Fatal("the first fetch finished")
			}
			e.srv.Start()
			res, err := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(key) }).Fetch(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			sameFile(t, res.Path, src)
			if res.ResumedAt < 4<<20 || !strings.Contains(res.Origin, "resumed at byte") {
				t.Fatalf("resumed at %d (%s)", res.ResumedAt, res.Origin)
			}
		})
	}
}

// TestSSRFGuardOnSources: a grant (what a manifest declares) never reaches
// loopback; only the operator's allowlist can; a redirect to a host that is
// neither granted nor allowed is refused.
func TestSSRFGuardOnSources(t *testing.T) {
	ca := pulltest.NewCA(t)
	srv := pulltest.NewFileServer(t, ca)
	other := pulltest.NewFileServer(t, ca)
	dir := t.TempDir()
	src := filepath.Join(dir, "x.csv")
	sum := writeRandom(t, src, 100)
	srv.Add("/x.csv", src)
	other.Add("/x.csv", src)
	srv.Redirects["/moved.csv"] = other.URL("/x.csv")
	srv.Redirects["/metadata"] = "http://169.254.169.254/latest/meta-data/"
	fetch := func(dial func(ctx context.Context, network, addr string) (net.Conn, error), url string) error {
		f, err := pull.New(pull.Config{Dir: filepath.Join(t.TempDir(), "s"), Dial: dial, RootCAs: ca.Pool, Retry: pull.Backoff{Attempts: 1}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Fetch(context.Background(), pull.Resource{What: "dataset 0", Source: manifest.ResourceSource{URL: url}, Hash: sum})
		return err
	}
	_, grantOnly := egressFor(t, nil, []string{srv.Addr})
	if err := fetch(grantOnly, srv.URL("/x.csv")); !errors.Is(err, pull.ErrForbidden) || !strings.Contains(err.Error(), "is loopback") {
		t.Fatalf("a granted loopback source: %v", err)
	}
	_, operator := egressFor(t, []string{srv.Addr}, nil)
	if err := fetch(operator, srv.URL("/x.csv")); err != nil {
		t.Fatalf("an operator-allowed source: %v", err)
	}
	if err := fetch(operator, srv.URL("/moved.csv")); !errors.Is(err, pull.ErrForbidden) || !strings.Contains(err.Error(), other.Addr) {
		t.Fatalf("a redirect to another host: %v", err)
	}
	if err := fetch(operator, srv.URL("/metadata")); !errors.Is(err, pull.ErrForbidden) || !strings.Contains(err.Error(), "redirect from https to http") {
		t.Fatalf("a redirect to the metadata service: %v", err)
	}
	_, both := egressFor(t, []string{srv.Addr, other.Addr}, nil)
	if err := fetch(both, srv.URL("/moved.csv")); err != nil {
		t.Fatalf("a redirect the operator allows: %v", err)
	}
}
