// Package digest computes the SHA3-256 checksums Cocos manifests carry: of a
// file's bytes, of a directory as its deterministic zip (package cocoszip),
// and of a manifest file (package manifest has that rule).
//
// It does not decide what a hash should be compared with. Imported by the
// agent, the CLI and the development manager.
package digest

import (
	"crypto/sha3"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/cvmd/cvmd/cocos/zipdir"
)

// Size is the length of a digest in bytes.
const Size = 32

// New returns a SHA3-256 hash (the standard library's, which
// golang.org/x/crypto/sha3 wraps, with the amd64 assembly Keccak).
func New() hash.Hash { return sha3.New256() }

// Sum returns the SHA3-256 of b.
func Sum(b []byte) [Size]byte { return sha3.Sum256(b) }

// Reader returns the SHA3-256 of everything r yields.
func Reader(r io.Reader) ([Size]byte, int64, error) {
	h := New()
	n, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	var out [Size]byte
	if err != nil {
		return out, n, err
	}
	copy(out[:], h.Sum(nil))
	return out, n, nil
}

// Path returns the checksum of a file's bytes, or of a directory's
// deterministic zip.
func Path(p string) ([Size]byte, error) {
	st, err := os.Stat(p)
	if err != nil {
		return [Size]byte{}, fmt.Errorf("digest: %w", err)
	}
	if st.IsDir() {
		h := New()
		if _, err := zipdir.WriteDir(h, p); err != nil {
			return [Size]byte{}, err
		}
		var out [Size]byte
		copy(out[:], h.Sum(nil))
		return out, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return [Size]byte{}, fmt.Errorf("digest: %w", err)
	}
	defer f.Close()
	sum, _, err := Reader(f)
	if err != nil {
		return sum, fmt.Errorf("digest: reading %s: %w", p, err)
	}
	return sum, nil
}

// Hex is the lowercase hex form Cocos prints.
func Hex(sum [Size]byte) string { return hex.EncodeToString(sum[:]) }
