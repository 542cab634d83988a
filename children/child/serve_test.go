package child

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	for _, content := range []string{"first", "second, longer than the first", "3"} {
		if err := WriteFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != content {
			t.Fatalf("read %q, %v; want %q", b, err, content)
		}
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, %v; want 0600", st.Mode(), err)
		}
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}
	// A directory that does not exist: an error, nothing written.
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "state"), []byte("x"), 0o600); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
	// A path that is a directory: the rename fails and the temporary file goes.
	os.Mkdir(filepath.Join(dir, "isdir"), 0o700)
	if err := WriteFileAtomic(filepath.Join(dir, "isdir"), []byte("x"), 0o600); err == nil {
		t.Error("replacing a directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "isdir.tmp")); !os.IsNotExist(err) {
		t.Errorf("temporary file left after a failed rename: %v", err)
	}
}
