package digest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPath(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("abc"), 0o644)
	got, err := Path(f)
	// SHA3-256("abc") from FIPS 202's examples.
	if err != nil || Hex(got) != "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532" {
		t.Fatalf("%s %v", Hex(got), err)
	}
	d1, err := Path(dir)
	if err != nil || d1 == got {
		t.Fatalf("dir digest %x %v", d1, err)
	}
	if _, err := Path(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file hashed")
	}
}
