package pull

import (
	"io"
	"sync"
)

// asyncWriter hands each Write's bytes (copied into one of a few pooled
// buffers) to a goroutine that writes them to w, so that the caller's work
// (decrypting, writing the file) overlaps w's (SHA3-256, the slowest
// stage). Close waits for the goroutine; w's error is returned by the next
// Write or by Close.
type asyncWriter struct {
	w      io.Writer
	free   chan []byte
	full   chan []byte
	closed bool // Close ran; full is closed (only the caller's goroutine reads or sets it)
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error // guarded by mu
}

// asyncBuffers bounds the bytes in flight (asyncBuffers × asyncBufSize).
const asyncBuffers, asyncBufSize = 4, 1 << 20

func newAsyncWriter(w io.Writer) *asyncWriter {
	a := &asyncWriter{w: w, free: make(chan []byte, asyncBuffers), full: make(chan []byte, asyncBuffers)}
	for range asyncBuffers {
		a.free <- make([]byte, asyncBufSize)
	}
	// The goroutine ranges over its own copy of the channel: it may first run
	// after Close (a small blob on a loaded machine), and must then still see
	// the closed channel.
	full := a.full
	a.wg.Go(func() {
		for b := range full {
			if _, err := a.w.Write(b); err != nil {
				a.mu.Lock()
				if a.err == nil {
					a.err = err
				}
				a.mu.Unlock()
			}
			a.free <- b[:cap(b)]
		}
	})
	return a
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	a.mu.Lock()
	err := a.err
	a.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		b := <-a.free
		k := copy(b, p)
		p = p[k:]
		a.full <- b[:k]
	}
	return n, nil
}

// Close waits for every queued byte to be written. Idempotent.
func (a *asyncWriter) Close() error {
	if !a.closed {
		a.closed = true
		close(a.full)
		a.wg.Wait()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}
