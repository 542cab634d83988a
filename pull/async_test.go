package pull

import (
	"bytes"
	"errors"
	"testing"
	"testing/synctest"
)

// TestAsyncWriterCloseBeforeGoroutineRuns closes the writer before its
// goroutine was ever scheduled (what a small blob on a loaded machine does).
// In a synctest bubble the new goroutine runs only once the test blocks, so
// this ordering is certain; a goroutine that reads a channel Close already
// cleared blocks forever and the bubble reports the deadlock.
func TestAsyncWriterCloseBeforeGoroutineRuns(t *testing.T) {
	for _, payload := range [][]byte{nil, []byte("small blob")} {
		synctest.Test(t, func(t *testing.T) {
			var out bytes.Buffer
			a := newAsyncWriter(&out)
			if len(payload) > 0 {
				if _, err := a.Write(payload); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), payload) {
				t.Fatalf("wrote %q, want %q", out.Bytes(), payload)
			}
			if err := a.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

func TestAsyncWriterReportsWriteError(t *testing.T) {
	boom := errors.New("boom")
	a := newAsyncWriter(failingWriter{boom})
	if _, err := a.Write(make([]byte, 3*asyncBufSize)); err != nil && !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if err := a.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close: %v, want %v", err, boom)
	}
}
