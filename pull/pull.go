// Package pull fetches a computation's remote algorithm and datasets
// (Cocos's "pull mode"): from HTTP(S) servers, S3 and S3-compatible stores
// (GCS through its S3-compatible XML API) and OCI registries, decrypting
// Cocos's encrypted format with a key released by a KBS after attestation
// (package pull/kbs), and checking the SHA3-256 the manifest declares.
//
// Every byte streams: download → (decrypt) → SHA3-256 → a staging file, in
// bounded memory whatever the size. Nothing is returned before it is
// complete, authenticated and hashed; a failure removes what it fetched
// unless it can be resumed. A download interrupted (by the server, the
// network or the death of this process) resumes with a range request where
// the server supports it, after a back-off, and the staging dir keeps the
// partial bytes across restarts.
//
// It opens no socket itself: every connection goes through Config.Dial (the
// egress child's CONNECT proxy in the agent), so the egress's allowlist,
// the computation's grant and the SSRF guard see every host, redirect and
// DNS answer. It imports cocos/*, pull/cipherfile and client libraries
// (AWS SDK v2, go-containerregistry); never supervisor/, sandbox/ or
// children/. The agent imports it; the supervisor uses Grant.
package pull

import (
	"context"
	"crypto/sha3"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/pull/cipherfile"
)

// KeyBroker releases the key of an encrypted resource (pull/kbs.Client).
type KeyBroker interface {
	Key(ctx context.Context, kbsURL, resourcePath string) ([]byte, error)
}

// Config is what a Fetcher needs.
type Config struct {
	// Dir is the staging dir: partial downloads live there across
	// restarts. Required; created if missing.
	Dir string
	// Dial opens every TCP connection (EgressDialer.DialContext in the
	// agent). Required.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs verify TLS servers; nil: the system's roots.
	RootCAs *x509.CertPool
	// Endpoints of the object stores.
	Endpoints Endpoints
	// Keys releases keys of encrypted resources; nil refuses them.
	Keys KeyBroker
	// MaxBytes caps one resource (its plaintext); 0: no cap.
	MaxBytes int64
	// CheckSpace, if set, is called before a download and every 64 MiB
	// with the bytes still expected (-1 unknown); an error stops it.
	CheckSpace func(need int64) error
	// Retry is the back-off; zero fields take the defaults.
	Retry Backoff
	// IdleTimeout ends a download that receives nothing for that long (it
	// is then retried); 0 means 60 s.
	IdleTimeout time.Duration
	// Progress, if set, is told about each download every ProgressEvery.
	Progress func(Progress)
	// Log; nil discards.
	Log *slog.Logger
}

// Backoff is how failed attempts are retried: after a transient failure,
// wait Base·2^k (with jitter, at most Max) and resume. Attempts counts
// consecutive failures without progress.
type Backoff struct {
	Base, Max time.Duration
	Attempts  int
}

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = 250 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 10 * time.Second
	}
	if b.Attempts <= 0 {
		b.Attempts = 7
	}
	return b
}

func (b Backoff) delay(k int) time.Duration {
	d := b.Base << min(k, 20)
	if d > b.Max || d <= 0 {
		d = b.Max
	}
	return d/2 + rand.N(d/2+1) // jitter: half fixed, half random
}

// Progress reports a download in flight.
type Progress struct {
	What, Source string
	Bytes, Total int64 // Total -1 when the server did not say
}

// ProgressEvery is how many bytes pass between Progress calls.
const ProgressEvery = 64 << 20

// Role says what a resource is for (OCI images are unpacked differently).
type Role int

// Roles.
const (
	RoleDataset Role = iota
	RoleAlgorithm
)

// Resource is one thing to fetch.
type Resource struct {
	// What names it in errors and logs: "algorithm", `dataset "iris.csv"`.
	What   string
	Source manifest.ResourceSource
	KBS    *manifest.KBSConfig
	// Hash is the manifest's SHA3-256 (of the plaintext, for encrypted
	// resources; of the extracted file or its zip, for OCI).
	Hash     [32]byte
	Role     Role
	AlgoType string // algorithms: bin, python, wasm, docker
}

// Result is a fetched, verified resource in the staging dir.
type Result struct {
	// Path is the verified file, or directory (Dir) when an OCI image
	// yielded several dataset files. The caller moves it away.
	Path string
	Dir  bool
	// Name is the file name the source suggests (Location.Name, or the
	// single file extracted from an image).
	Name string
	// Requirements is the path of a requirements.txt found in an OCI
	// image for a python algorithm, or "".
	Requirements string
	Size         int64  // bytes of Path (of the plaintext)
	Downloaded   int64  // bytes received over the network by this call
	ResumedAt    int64  // offset a download resumed from (0: from the start)
	Attempts     int    // attempts made
	Encrypted    bool   // decrypted with a KBS key
	Origin       string // where from, for logs and events
}

// Fetcher fetches resources.
type Fetcher struct {
	cfg   Config
	log   *slog.Logger
	retry Backoff
}

// New checks cfg and returns a Fetcher.
func New(cfg Config) (*Fetcher, error) {
	if cfg.Dir == "" || cfg.Dial == nil {
		return nil, errors.New("pull: Config needs Dir and Dial")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("pull: staging dir: %w", err)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fetcher{cfg: cfg, log: log, retry: cfg.Retry.withDefaults()}, nil
}

// Fetch downloads r, decrypts it if it is encrypted, checks its hash and
// returns the verified file. Every error is an *Error naming the resource,
// its source and the class of failure.
func (f *Fetcher) Fetch(ctx context.Context, r Resource) (*Result, error) {
	res, err := f.fetch(ctx, r)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, &Error{Resource: r.What, Source: r.Source.URL, Class: classOf(err), Err: err}
	}
	return res, nil
}

func classOf(err error) error {
	for _, c := range []error{ErrUnreachable, ErrForbidden, ErrNotFound, ErrHashMismatch, ErrDecrypt, ErrKBS, ErrInvalidSource, ErrTooLarge} {
		if errors.Is(err, c) {
			return c
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if isTransient(err) {
		return ErrUnreachable
	}
	return errors.New("failed")
}

func (f *Fetcher) fetch(ctx context.Context, r Resource) (*Result, error) {
	loc, err := Parse(r.Source.Type, r.Source.URL)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(f.cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("staging dir: %w", err)
	}
	var key []byte
	if r.Source.Encrypted {
		if loc.Kind == KindOCI {
			return nil, classErr(ErrInvalidSource, "encrypted OCI images (ocicrypt layers) are not supported; encrypt the file inside the image instead")
		}
		if key, err = f.key(ctx, r); err != nil {
			return nil, err
		}
		defer clear(key)
	}
	if loc.Kind == KindOCI {
		return f.fetchOCI(ctx, r, loc)
	}
	src, err := f.blobSource(loc)
	if err != nil {
		return nil, err
	}
	return f.fetchBlob(ctx, r, loc, src, key)
}

// key asks the KBS named by the resource for its key.
func (f *Fetcher) key(ctx context.Context, r Resource) ([]byte, error) {
	if r.KBS == nil || !r.KBS.Enabled || r.KBS.URL == "" {
		return nil, classErr(ErrInvalidSource, "encrypted, but no enabled KBS with a URL is declared")
	}
	if r.Source.KBSResourcePath == "" {
		return nil, classErr(ErrInvalidSource, "encrypted, but no kbs_resource_path is declared")
	}
	if f.cfg.Keys == nil {
		return nil, classErr(ErrKBS, "no key broker client configured")
	}
	key, err := f.cfg.Keys.Key(ctx, r.KBS.URL, r.Source.KBSResourcePath)
	if err != nil {
		if errors.Is(err, ErrKBS) {
			return nil, err
		}
		return nil, classed{ErrKBS, err}
	}
	if len(key) != cipherfile.KeySize {
		clear(key)
		return nil, classErr(ErrKBS, "KBS resource %q is %d bytes, not a %d-byte AES-256 key", r.Source.KBSResourcePath, len(key), cipherfile.KeySize)
	}
	return key, nil
}

// blob is a source of one object's bytes that can start at an offset.
type blob interface {
	// open returns the object's bytes from off. validator (from an earlier
	// open) asks for the same version of the object; info.restart says the
	// source sent it from offset 0 instead (no range support, or the
	// object changed), and the caller must start over.
	open(ctx context.Context, off int64, validator string) (io.ReadCloser, blobInfo, error)
}

type blobInfo struct {
	size      int64 // total size, -1 unknown
	validator string
	restart   bool
	origin    string
}

// stagingMeta is kept beside a partial download.
type stagingMeta struct {
	URL       string `json:"url"`
	Validator string `json:"validator"`
	Size      int64  `json:"size"`
}

func (f *Fetcher) staging(r Resource) string {
	h := sha3.New256()
	fmt.Fprintf(h, "%s\x00%x\x00%t", r.Source.URL, r.Hash, r.Source.Encrypted)
	return filepath.Join(f.cfg.Dir, hex.EncodeToString(h.Sum(nil))[:24])
}

// Discard removes whatever is staged for r.
func (f *Fetcher) Discard(r Resource) {
	base := f.staging(r)
	for _, ext := range []string{".part", ".meta", ".plain", ".oci"} {
		os.RemoveAll(base + ext)
	}
}

func (f *Fetcher) fetchBlob(ctx context.Context, r Resource, loc *Location, src blob, key []byte) (*Result, error) {
	base := f.staging(r)
	partPath, metaPath, plainPath := base+".part", base+".meta", base+".plain"
	var meta stagingMeta
	if b, err := os.ReadFile(metaPath); err == nil && json.Unmarshal(b, &meta) == nil && meta.URL == r.Source.URL {
		// A download of the same URL and hash started before: resume it.
	} else {
		meta = stagingMeta{URL: r.Source.URL, Size: -1}
		os.Remove(partPath)
	}
	part, err := os.OpenFile(partPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	defer part.Close()
	st, err := part.Stat()
	if err != nil {
		return nil, err
	}
	have := st.Size()
	resumedAt := have
	res := &Result{Name: loc.Name(), Encrypted: key != nil}
	var proc *processor
	defer func() {
		if proc != nil {
			proc.close()
		}
	}()
	failures := 0
	for {
		res.Attempts++
		actx, acancel := context.WithCancel(ctx) // also ended by the idle timer
		body, info, err := src.open(actx, have, meta.Validator)
		startOver := errors.Is(err, errStartOver)
		if startOver || err == nil && (info.restart || (meta.Validator != "" && info.validator != meta.Validator && have > 0)) {
			// The source sent the object from the start (no ranges, or a
			// new version): what we have is worthless.
			if have > 0 {
				f.log.Info("pull: restarting download from 0", "what", r.What, "source", r.Source.URL, "had", have)
			}
			if err := part.Truncate(0); err != nil {
				if body != nil {
					body.Close()
				}
				acancel()
				return nil, err
			}
			have, resumedAt = 0, 0
			if proc != nil {
				proc.close()
				proc = nil
			}
		}
		if err == nil {
			res.Origin = info.origin
			meta.Validator, meta.Size = info.validator, info.size
			if err := writeMeta(metaPath, meta); err != nil {
				body.Close()
				acancel()
				return nil, err
			}
			if err := f.checkSize(r, key != nil, info.size); err != nil {
				body.Close()
				f.Discard(r)
				acancel()
				return nil, err
			}
			if proc == nil || proc.n != have {
				if proc != nil {
					proc.close()
				}
				if proc, err = f.newProcessor(key, plainPath, part, have); err != nil {
					body.Close()
					acancel()
					return nil, err
				}
			}
			var got int64
			got, err = f.copy(actx, acancel, r, part, proc, body, have, info.size)
			res.Downloaded += got
			have += got
			if got > 0 {
				failures = 0
			}
			if err == nil && info.size >= 0 && have != info.size {
				err = transient{fmt.Errorf("got %d of %d bytes", have, info.size)}
			}
		}
		acancel()
		if err == nil {
			break
		}
		if errors.Is(err, ErrTooLarge) {
			f.Discard(r)
			return nil, err
		}
		if !isTransient(err) || ctx.Err() != nil {
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrForbidden) {
				f.Discard(r) // nothing to resume
			}
			return nil, err
		}
		failures++
		if failures >= f.retry.Attempts {
			return nil, fmt.Errorf("after %d attempts: %w", res.Attempts, err)
		}
		d := f.retry.delay(failures - 1)
		f.log.Warn("pull: retrying", "what", r.What, "source", r.Source.URL, "have", have, "in", d.String(), "err", err.Error())
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	sum, size, err := proc.finish()
	proc = nil
	if err != nil {
		f.Discard(r)
		return nil, err
	}
	if sum != r.Hash {
		f.Discard(r)
		return nil, classErr(ErrHashMismatch, "expected %x, got %x", r.Hash, sum)
	}
	out := partPath
	if key != nil {
		out = plainPath
		os.Remove(partPath)
	}
	os.Remove(metaPath)
	res.Path, res.Size, res.ResumedAt = out, size, resumedAt
	if resumedAt > 0 {
		res.Origin += fmt.Sprintf(" (resumed at byte %d)", resumedAt)
	}
	return res, nil
}

func (f *Fetcher) checkSize(r Resource, encrypted bool, size int64) error {
	if f.cfg.MaxBytes <= 0 || size < 0 {
		return nil
	}
	max := f.cfg.MaxBytes
	if encrypted {
		max += cipherfile.Overhead
	}
	if size > max {
		return classErr(ErrTooLarge, "%d bytes, the agent accepts %d", size, f.cfg.MaxBytes)
	}
	return nil
}

func writeMeta(p string, m stagingMeta) error {
	b, _ := json.Marshal(m)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// processor hashes (and decrypts) the raw bytes in order. The hash runs in
// its own goroutine (hw), overlapping decryption and the file writes.
type processor struct {
	h     hash.Hash
	hw    *asyncWriter
	dec   *cipherfile.Decrypter
	plain *os.File
	n     int64 // raw bytes consumed
	size  int64 // plaintext bytes
}

// newProcessor starts over and feeds it the first have bytes already on
// disk (a resumed download).
func (f *Fetcher) newProcessor(key []byte, plainPath string, part *os.File, have int64) (*processor, error) {
	p := &processor{h: digest.New()}
	p.hw = newAsyncWriter(p.h)
	if key != nil {
		pf, err := os.OpenFile(plainPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			p.hw.Close()
			return nil, err
		}
		p.plain = pf
		if p.dec, err = cipherfile.NewDecrypter(key, io.MultiWriter(pf, p.hw, (*counter)(&p.size))); err != nil {
			p.close()
			return nil, err
		}
	}
	if have > 0 {
		if _, err := io.CopyBuffer(p, io.NewSectionReader(part, 0, have), make([]byte, 1<<20)); err != nil {
			p.close()
			return nil, fmt.Errorf("re-reading the partial download: %w", err)
		}
	}
	return p, nil
}

type counter int64

func (c *counter) Write(b []byte) (int, error) { *c += counter(len(b)); return len(b), nil }

func (p *processor) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if p.dec != nil {
		return p.dec.Write(b)
	}
	p.size += int64(len(b))
	return p.hw.Write(b)
}

// finish checks the tag (encrypted) and returns the plaintext's SHA3-256.
func (p *processor) finish() ([32]byte, int64, error) {
	var sum [32]byte
	if p.dec != nil {
		err := p.dec.Close() // writes nothing more; the tag check
		if herr := p.hw.Close(); err == nil && herr != nil {
			err = herr
		}
		if cerr := p.plain.Close(); err == nil && cerr != nil {
			return sum, 0, cerr
		}
		p.plain = nil
		if err != nil {
			if errors.Is(err, cipherfile.ErrAuth) || errors.Is(err, cipherfile.ErrShort) {
				return sum, 0, classed{ErrDecrypt, err}
			}
			return sum, 0, err
		}
		copy(sum[:], p.h.Sum(nil))
		return sum, p.size, nil
	}
	if err := p.hw.Close(); err != nil {
		return sum, 0, err
	}
	copy(sum[:], p.h.Sum(nil))
	return sum, p.size, nil
}

func (p *processor) close() {
	p.hw.Close()
	if p.plain != nil {
		p.plain.Close()
	}
}

// copy appends body to part and feeds proc, reading the network in its own
// goroutine so that receiving (and TLS) overlaps hashing. At most
// copyBuffers MiB are in flight. It takes ownership of body; cancel ends
// the request body's context (the idle timer calls it).
func (f *Fetcher) copy(ctx context.Context, cancel context.CancelFunc, r Resource, part *os.File, proc *processor, body io.ReadCloser, have, total int64) (int64, error) {
	const copyBuffers, bufSize = 4, 1 << 20
	var wg sync.WaitGroup
	done := make(chan struct{})
	defer func() {
		close(done)
		body.Close() // unblocks the reader
		wg.Wait()
	}()
	if f.cfg.CheckSpace != nil {
		if err := f.cfg.CheckSpace(remaining(total, have)); err != nil {
			return 0, err
		}
	}
	if _, err := part.Seek(have, io.SeekStart); err != nil {
		return 0, err
	}
	idle := time.AfterFunc(f.cfg.IdleTimeout, cancel)
	defer idle.Stop()
	type chunk struct {
		b   []byte
		err error
	}
	free := make(chan []byte, copyBuffers)
	for range copyBuffers {
		free <- make([]byte, bufSize)
	}
	full := make(chan chunk, copyBuffers)
	wg.Go(func() {
		defer close(full)
		for {
			var b []byte
			select {
			case b = <-free:
			case <-done:
				return
			}
			n, err := io.ReadFull(body, b)
			idle.Reset(f.cfg.IdleTimeout)
			if n > 0 {
				select {
				case full <- chunk{b: b[:n]}:
				case <-done:
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					err = io.EOF
				}
				select {
				case full <- chunk{err: err}:
				case <-done:
				}
				return
			}
		}
	})
	var got int64
	nextProgress, nextSpace := have+ProgressEvery, have+ProgressEvery
	for c := range full {
		if c.err != nil {
			if c.err == io.EOF {
				if total >= 0 && have+got < total {
					return got, transient{fmt.Errorf("connection ended after %d of %d bytes", have+got, total)}
				}
				return got, nil
			}
			if ctx.Err() != nil {
				return got, transient{fmt.Errorf("receiving: nothing for %v, or stopped: %w", f.cfg.IdleTimeout, c.err)}
			}
			return got, transient{fmt.Errorf("receiving: %w", c.err)}
		}
		if _, err := part.Write(c.b); err != nil {
			return got, fmt.Errorf("writing the staging file: %w", err)
		}
		if _, err := proc.Write(c.b); err != nil {
			return got, fmt.Errorf("decrypting: %w", err)
		}
		got += int64(len(c.b))
		free <- c.b[:cap(c.b)]
		pos := have + got
		if f.cfg.MaxBytes > 0 && pos > f.cfg.MaxBytes+cipherfile.Overhead {
			return got, classErr(ErrTooLarge, "more than %d bytes", f.cfg.MaxBytes)
		}
		if pos >= nextProgress && f.cfg.Progress != nil {
			nextProgress += ProgressEvery
			f.cfg.Progress(Progress{What: r.What, Source: r.Source.URL, Bytes: pos, Total: total})
		}
		if pos >= nextSpace && f.cfg.CheckSpace != nil {
			nextSpace += ProgressEvery
			if err := f.cfg.CheckSpace(remaining(total, pos)); err != nil {
				return got, err
			}
		}
	}
	return got, nil
}

func remaining(total, have int64) int64 {
	if total < 0 {
		return -1
	}
	return total - have
}

// timeAfter is time.After (a variable for nothing but readability of wait).
var timeAfter = time.After
