package zipdir

import (
	"archive/zip"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func tree(t testing.TB, files map[string]string) string {
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestWriteDirIsDeterministicAndCocosShaped(t *testing.T) {
	dir := tree(t, map[string]string{"b.txt": "B", "a/z.txt": "Z", "a.txt": "A", "a/b/c": "C"})
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
	var one, two bytes.Buffer
	if _, err := WriteDir(&one, dir); err != nil {
		t.Fatal(err)
	}
	// Touching files and re-creating them elsewhere changes nothing.
	os.Chtimes(filepath.Join(dir, "a.txt"), time.Now(), time.Now().Add(-time.Hour))
	dir2 := tree(t, map[string]string{"a/b/c": "C", "a.txt": "A", "b.txt": "B", "a/z.txt": "Z"})
	if _, err := WriteDir(&two, dir2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Fatal("same tree, different zip bytes")
	}
	zr, err := zip.NewReader(bytes.NewReader(one.Bytes()), int64(one.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		if f.Method != zip.Store || !f.Modified.Equal(time.Unix(0, 0)) || f.Flags&0x8 == 0 || f.Mode().Perm() != 0o644 {
			t.Errorf("%s: method %d modified %v flags %#x mode %v", f.Name, f.Method, f.Modified, f.Flags, f.Mode())
		}
	}
	// Sorted by full path: "a.txt" < "a/b/c" because '.' < '/'. No symlink, no dirs.
	if got := strings.Join(names, ","); got != "a.txt,a/b/c,a/z.txt,b.txt" {
		t.Fatalf("entries %s", got)
	}
	// Permissions are part of the bytes, as in Cocos.
	os.Chmod(filepath.Join(dir2, "b.txt"), 0o600)
	var three bytes.Buffer
	WriteDir(&three, dir2)
	if bytes.Equal(one.Bytes(), three.Bytes()) {
		t.Fatal("mode change did not change the zip")
	}
}

func zipOf(t testing.TB, entries []zip.FileHeader, body string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for _, h := range entries {
		h := h
		w, err := zw.CreateHeader(&h)
		if err != nil {
			t.Fatal(err)
		}
		if !h.Mode().IsDir() {
			w.Write([]byte(body))
		}
	}
	zw.Close()
	return b.Bytes()
}

func hdr(name string, mode os.FileMode) zip.FileHeader {
	h := zip.FileHeader{Name: name, Method: zip.Deflate}
	h.SetMode(mode)
	return h
}

func TestExtract(t *testing.T) {
	tests := []struct {
		name    string
		entries []zip.FileHeader
		body    string
		lim     Limits
		wantErr error
		want    []string
	}{
		{"plain files and dirs", []zip.FileHeader{hdr("d/", os.ModeDir|0o755), hdr("d/x.csv", 0o644), hdr("y", 0o600)}, "data", Limits{}, nil, []string{"d/x.csv", "y"}},
		{"dot-dot escapes", []zip.FileHeader{hdr("../evil", 0o644)}, "x", Limits{}, ErrUnsafeEntry, nil},
		{"nested dot-dot escapes", []zip.FileHeader{hdr("a/../../evil", 0o644)}, "x", Limits{}, ErrUnsafeEntry, nil},
		{"absolute name", []zip.FileHeader{hdr("/etc/evil", 0o644)}, "x", Limits{}, ErrUnsafeEntry, nil},
		{"backslash", []zip.FileHeader{hdr(`..\evil`, 0o644)}, "x", Limits{}, ErrUnsafeEntry, nil},
		{"symlink", []zip.FileHeader{hdr("l", os.ModeSymlink|0o777)}, "/etc/passwd", Limits{}, ErrUnsafeEntry, nil},
		{"too many entries", []zip.FileHeader{hdr("a", 0o644), hdr("b", 0o644), hdr("c", 0o644)}, "x", Limits{MaxEntries: 2}, ErrTooLarge, nil},
		{"bomb", []zip.FileHeader{hdr("a", 0o644)}, strings.Repeat("0", 1<<20), Limits{MaxBytes: 1000}, ErrTooLarge, nil},
		{"duplicate entry", []zip.FileHeader{hdr("a", 0o644), hdr("a", 0o644)}, "x", Limits{}, os.ErrExist, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			z := zipOf(t, tc.entries, tc.body)
			parent := t.TempDir()
			dest := filepath.Join(parent, "out")
			os.Mkdir(dest, 0o755)
			err := Extract(bytes.NewReader(z), int64(len(z)), dest, tc.lim)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
					t.Fatal("file written outside the target")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if b, err := os.ReadFile(filepath.Join(dest, w)); err != nil || string(b) != tc.body {
					t.Errorf("%s: %q %v", w, b, err)
				}
			}
		})
	}
	if err := Extract(bytes.NewReader([]byte("not a zip")), 9, t.TempDir(), Limits{}); !errors.Is(err, ErrNotZip) {
		t.Fatalf("garbage: %v", err)
	}
}

func FuzzExtract(f *testing.F) {
	f.Add(zipOf(f, []zip.FileHeader{hdr("a/b", 0o644)}, "x"))
	f.Add(zipOf(f, []zip.FileHeader{hdr("../x", 0o644)}, "x"))
	f.Add([]byte("PK\x03\x04"))
	f.Fuzz(func(t *testing.T, z []byte) {
		parent := t.TempDir()
		dest := filepath.Join(parent, "out")
		os.Mkdir(dest, 0o755)
		Extract(bytes.NewReader(z), int64(len(z)), dest, Limits{MaxEntries: 50, MaxBytes: 1 << 20})
		// Whatever happened, nothing may exist next to the target.
		ents, _ := os.ReadDir(parent)
		if len(ents) != 1 {
			t.Fatalf("extraction escaped: %v", ents)
		}
	})
}
