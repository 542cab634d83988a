package zipdir

import (
	"crypto/sha3"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// TestGoldenZip pins the bytes of the deterministic zip of a fixed tree (by
// their SHA3-256): a change here changes every directory dataset's and
// result's checksum, and breaks agreement with Cocos.
func TestGoldenZip(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []struct {
		name string
		mode os.FileMode
		body string
	}{{"b.txt", 0o644, "B"}, {"a/z.txt", 0o600, "Z"}, {"a.txt", 0o755, "A"}, {"a/b/c", 0o644, strings.Repeat("c", 1000)}} {
		p := filepath.Join(dir, f.name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(f.body), 0o644)
		os.Chmod(p, f.mode)
	}
	h := sha3.New256()
	if _, err := WriteDir(h, dir); err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(h.Sum(nil)) + "\n"
	golden := filepath.Join("testdata", "tree.zip.sha3")
	if *update {
		os.WriteFile(golden, []byte(got), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("zip bytes changed: sha3 %s, golden %s", got, want)
	}
}
