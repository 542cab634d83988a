package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/mem"

	"github.com/cvmd/cvmd/cocos/chunks"
	"github.com/cvmd/cvmd/cocos/digest"
)

// spool receives one upload into a temporary file in the incoming dir while
// hashing it. Hashing and writing run in their own goroutines so that
// receiving, hashing and writing overlap: SHA3-256 is the slowest stage and
// sets the rate. Chunks are never copied: each received chunk (gRPC's own
// receive buffers, see cocos/chunks) goes to both, each stage holding its
// own reference, and is written with one writev.
type spool struct {
	slot    chan struct{} // released by stop
	path    string
	f       *os.File
	h       hash.Hash
	max     int64
	minFree int64
	what    string

	n         int64
	nextCheck int64
	hashCh    chan mem.BufferSlice
	writeCh   chan mem.BufferSlice
	wg        sync.WaitGroup
	mu        sync.Mutex
	werr      error // guarded by mu: the writer's first error

	start    time.Time
	hashWait time.Duration // the hash stage's time without a chunk to hash; read after stop
}

// spoolDepth bounds the chunks in flight per stage (≈ MiB of memory each).
const spoolDepth = 4

// diskCheckEvery is how often (bytes) free space is checked during an upload.
const diskCheckEvery = 64 << 20

// maxUploads bounds the uploads received at once, so that memory (≈ 10 MiB
// of chunks and windows each) stays bounded however many clients connect.
// Later uploads wait for a slot.
const maxUploads = 4

func (a *Agent) newSpool(ctx context.Context, what string, max int64) (*spool, error) {
	select {
	case a.uploads <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for an upload slot: %w", ctx.Err())
	}
	r, err := room(a.dirs.incoming, a.lim.minFree)
	if err == nil && r < 0 {
		err = fmt.Errorf("%w: %d bytes free, the agent keeps min_free_bytes %d", ErrNoSpace, r+a.lim.minFree, a.lim.minFree)
	}
	if err != nil {
		<-a.uploads
		return nil, err
	}
	f, err := os.CreateTemp(a.dirs.incoming, "upload-*")
	if err != nil {
		<-a.uploads
		return nil, fmt.Errorf("creating upload file: %w", err)
	}
	s := &spool{start: time.Now(), slot: a.uploads, path: f.Name(), f: f, h: digest.New(), max: max, minFree: a.lim.minFree, what: what,
		nextCheck: min(r, diskCheckEvery), hashCh: make(chan mem.BufferSlice, spoolDepth), writeCh: make(chan mem.BufferSlice, spoolDepth)}
	hashCh, writeCh := s.hashCh, s.writeCh // stop nils the fields
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		ready := time.Now()
		for bs := range hashCh {
			s.hashWait += time.Since(ready)
			for _, b := range bs {
				s.h.Write(b.ReadOnlyData())
			}
			bs.Free()
			ready = time.Now()
		}
	}()
	go func() {
		defer s.wg.Done()
		failed := false
		for bs := range writeCh {
			if !failed {
				if err := chunks.WriteBuffers(s.f, bs); err != nil {
					s.mu.Lock()
					s.werr = writeErr(s.what, err)
					s.mu.Unlock()
					failed = true // then drain
				}
			}
			bs.Free()
		}
	}()
	return s, nil
}

// Write queues b, which the caller must not modify afterwards.
func (s *spool) Write(b []byte) error {
	return s.WriteBuffers(mem.BufferSlice{mem.SliceBuffer(b)})
}

// WriteBuffers queues bs, taking over the caller's reference (freed here
// on an error, else once hashed and written).
func (s *spool) WriteBuffers(bs mem.BufferSlice) error {
	n := bs.Len()
	if err := s.admit(n); err != nil || n == 0 {
		bs.Free()
		return err
	}
	bs.Ref() // one reference per stage
	s.hashCh <- bs
	s.writeCh <- bs
	return nil
}

// admit counts n more bytes, refusing them past the size limit, the
// free-space floor or a failed write.
func (s *spool) admit(n int) error {
	if n == 0 {
		return nil
	}
	s.mu.Lock()
	err := s.werr
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.n += int64(n)
	if s.n > s.max {
		return fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, s.what, s.max)
	}
	if s.n >= s.nextCheck {
		// Check again before the room above the floor can be used up, and
		// at least every diskCheckEvery bytes.
		r, err := room(filepath.Dir(s.path), s.minFree)
		if err != nil {
			return err
		}
		if r < int64(n) {
			return fmt.Errorf("%w: receiving %s would leave less than min_free_bytes %d free (%d bytes of room left)", ErrNoSpace, s.what, s.minFree, max(r, 0))
		}
		s.nextCheck = s.n + min(r, diskCheckEvery)
	}
	return nil
}

// finish waits for the stages and returns the digest. The file stays.
func (s *spool) finish() ([digest.Size]byte, error) {
	var sum [digest.Size]byte
	s.stop()
	if err := s.f.Close(); err != nil && s.werr == nil {
		s.werr = writeErr(s.what, err)
	}
	if s.werr != nil {
		os.Remove(s.path)
		return sum, s.werr
	}
	copy(sum[:], s.h.Sum(nil))
	return sum, nil
}

// logAttrs describe a finished upload for the agent's log: its duration
// and the share of it the hash stage (the bound on the rate) waited for
// data, which says whether receiving kept up.
func (s *spool) logAttrs() []any {
	el := time.Since(s.start)
	return []any{"bytes", s.n, "ms", el.Milliseconds(), "hash_waited_pct", int(100 * s.hashWait.Seconds() / max(el.Seconds(), 1e-9))}
}

// abort stops the stages and removes the file. Safe after finish.
func (s *spool) abort() {
	s.stop()
	s.f.Close()
	os.Remove(s.path)
}

func (s *spool) stop() {
	if s.hashCh != nil {
		close(s.hashCh)
		close(s.writeCh)
		s.hashCh, s.writeCh = nil, nil
		s.wg.Wait()
		<-s.slot
	}
}

// room returns how many bytes may still be written on the filesystem of
// dir without going below minFree available (negative: already below).
func room(dir string, minFree int64) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("checking free disk space: %w", err)
	}
	return int64(st.Bavail)*int64(st.Bsize) - minFree, nil
}

// isDiskFull reports whether err is the file system saying it is full.
func isDiskFull(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// writeErr is the error of a failed write of what: a full disk is
// ErrNoSpace (the uploader's ResourceExhausted), anything else stays as it
// is (an internal error).
func writeErr(what string, err error) error {
	if isDiskFull(err) {
		return fmt.Errorf("%w: writing %s: %v", ErrNoSpace, what, err)
	}
	return fmt.Errorf("writing %s: %w", what, err)
}

// smallFile collects a small upload (requirements.txt) with a cap.
type smallFile struct {
	bytes.Buffer
	max  int
	what string
}

func (s *smallFile) add(b []byte) error {
	if s.Len()+len(b) > s.max {
		return fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, s.what, s.max)
	}
	s.Write(b)
	return nil
}

// recvErr turns a stream receive error into the error to return: EOF is
// the normal end and is never returned here.
func recvErr(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("receiving upload: %w", err)
}
