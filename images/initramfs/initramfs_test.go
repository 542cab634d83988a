package initramfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{"init": "#!init", "usr/lib/a.so": "lib", "a-b": "x", "a/b": "y", "etc/empty": ""}
	for name, data := range files {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "init"), 0o755)
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	return root
}

func archive(t *testing.T, root string) []byte {
	t.Helper()
	es, err := FromDir(root)
	if err != nil {
		t.Fatal(err)
	}
	es = append(es, Entry{Name: "dev/console", Mode: TypeChr | 0o600, RdevMajor: 5, RdevMinor: 1})
	Sort(es)
	var buf bytes.Buffer
	if err := Write(&buf, es, 1700000000); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestArchiveIsReproducible(t *testing.T) {
	root := tree(t)
	a := archive(t, root)
	// Same content, different times and creation order: same bytes.
	os.Chtimes(filepath.Join(root, "init"), time.Now(), time.Now().Add(-time.Hour))
	b := archive(t, root)
	if !bytes.Equal(a, b) {
		t.Fatal("two archives of the same tree differ")
	}
	if len(a)%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", len(a))
	}
}

func TestArchiveListsWithCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed (scripts/deps.sh vm installs it)")
	}
	a := archive(t, tree(t))
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(a)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		l, _, _ := strings.Cut(l, " -> ")
		f := strings.Fields(l)
		names = append(names, f[len(f)-1])
		if strings.Contains(l, "dev/console") && !strings.HasPrefix(l, "crw-------") {
			t.Errorf("console listed as %q", l)
		}
	}
	want := ". a a/b a-b dev/console etc etc/empty init lib usr usr/lib usr/lib/a.so"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("order:\n got %s\nwant %s", got, want)
	}
}

func TestDuplicateRefused(t *testing.T) {
	var buf bytes.Buffer
	err := Write(&buf, []Entry{{Name: "x", Mode: TypeDir}, {Name: "x", Mode: TypeDir}}, 0)
	if err == nil || !strings.Contains(err.Error(), `duplicate entry "x"`) {
		t.Fatalf("Write with a duplicate = %v", err)
	}
}
