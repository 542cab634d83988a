package agent

import (
	"crypto/rand"
	"crypto/sha3"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cvmd/cvmd/internal/testutil"
)

// sha3FileHelper hashes the file named by its last argument with SHA3-256
// in 1 MiB reads: a transfer that does only what the reference does.
func sha3FileHelper() int {
	f, err := os.Open(os.Args[len(os.Args)-1])
	if err != nil {
		return 1
	}
	h := sha3.New256()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return 1
	}
	return 0
}

// TestBenchInterleaveNull checks the interleaved measurement itself: a
// "transfer" that only hashes a tmpfs file in a process of its own should
// come out near 100 % of the SHA3 reference it is interleaved with (a
// little below: it also reads the file and starts a process).
func TestBenchInterleaveNull(t *testing.T) {
	testutil.BenchOn(t)
	const size = 256 << 20
	pat := make([]byte, 1<<20)
	rand.Read(pat)
	src := filepath.Join(ramDir(t), "f")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	for range size >> 20 {
		f.Write(pat)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ref := startRef(t, "sha3loop", src)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var pcts []float64
	for range 5 {
		m := runInterleaved(t, self, []string{testutil.HelperEnv + "=sha3file"}, nil, ref, src)
		pcts = append(pcts, 100*m.rate(size)/m.refRate())
		t.Logf("null transfer: %.1f MiB/s, reference %.1f MiB/s: %.0f %%", m.rate(size), m.refRate(), pcts[len(pcts)-1])
	}
	testutil.Bench("interleave_null_of_sha3_pct", median(pcts), "pct", fmt.Sprintf("a process hashing a tmpfs file ÷ its interleaved SHA3 reference, median of %d; the method's own bias (ideal ≈ 100)", len(pcts)))
}
