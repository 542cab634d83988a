package zipdir

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
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

var errNoFloor = errors.New("below the floor")

// shrinkingRoom answers first, then every later call with then: another
// writer filling the disk during the extraction.
func shrinkingRoom(first, then int64) func() (int64, error) {
	calls := 0
	return func() (int64, error) {
		calls++
		if calls == 1 {
			return first, nil
		}
		return then, nil
	}
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
		{"declared size over the room", []zip.FileHeader{hdr("a", 0o644), hdr("b", 0o644)}, strings.Repeat("0", 1<<20),
			Limits{Room: func() (int64, error) { return 1 << 20, nil }}, ErrNoRoom, nil},
		{"room gone while extracting", []zip.FileHeader{hdr("a", 0o644)}, strings.Repeat("0", 20<<20),
			Limits{Room: shrinkingRoom(32<<20, 0)}, ErrNoRoom, nil},
		{"room answered with an error", []zip.FileHeader{hdr("a", 0o644)}, "x",
			Limits{Room: func() (int64, error) { return 0, errNoFloor }}, errNoFloor, nil},
		{"enough room", []zip.FileHeader{hdr("a", 0o644)}, strings.Repeat("0", 20<<20),
			Limits{Room: shrinkingRoom(32<<20, 32<<20)}, nil, []string{"a"}},
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
				if errors.Is(err, ErrNoRoom) {
					// Stopped before writing past the room: what was written
					// is at most the first answer.
					var n int64
					filepath.WalkDir(dest, func(_ string, d os.DirEntry, _ error) error {
						if info, err := d.Info(); err == nil && d.Type().IsRegular() {
							n += info.Size()
						}
						return nil
					})
					if n > 16<<20 {
						t.Fatalf("%d bytes written past the room", n)
					}
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
		Extract(bytes.NewReader(z), int64(len(z)), dest, Limits{MaxEntries: 50, MaxBytes: 1 << 20,
			Room: func() (int64, error) { return 512 << 10, nil }})
		// Whatever happened, nothing may exist next to the target.
		ents, _ := os.ReadDir(parent)
		if len(ents) != 1 {
			t.Fatalf("extraction escaped: %v", ents)
		}
	})
}

// nameCases drive TestCleanPath and seed the name fuzz targets: an
// algorithm's file names that a consumer's unzip, shell or Windows tool
// would misread.
var nameCases = []struct {
	name  string
	clean bool
}{
	{"result.txt", true},
	{"models/v1/model.bin", true},
	{"50%.csv", true},
	{"with space.txt", true},
	{"ünïcödé/日本.txt", true},
	{"a-b", true},
	{"file~1", true},
	{`..\..\..\evil.txt`, false},
	{`dir\file`, false},
	{"C:evil", false},
	{"stream.txt:hidden", false},
	{"line\nbreak.txt", false},
	{"carriage\rreturn", false},
	{"tab\there", false},
	{"esc\x1b[31m.txt", false},
	{"del\x7f", false},
	{"c1\u0085next", false},
	{"-rf", false},
	{"dir/-n", false},
	{"--help", false},
	{"\u202egnp.exe", false},
	{"zero\u200bwidth", false},
	{"bad\xffutf8", false},
	{"", false},
	{"a//b", false},
	{"./a", false},
	{"a/../b", false},
	{"/abs", false},
}

func TestCleanPath(t *testing.T) {
	for _, tc := range nameCases {
		t.Run(fmt.Sprintf("%q", tc.name), func(t *testing.T) {
			err := CleanPath(tc.name)
			if (err == nil) != tc.clean {
				t.Fatalf("CleanPath: %v, want clean %v", err, tc.clean)
			}
			safe := SafePath(tc.name)
			if err := CleanPath(safe); err != nil {
				t.Fatalf("SafePath gave %q: %v", safe, err)
			}
			if (safe == tc.name) != tc.clean {
				t.Fatalf("SafePath(%q) = %q", tc.name, safe)
			}
		})
	}
}

// TestWriteResultsFile: hostile names written by an algorithm come out of
// the results zip as clean relative paths, distinct from every other name
// (a clean file already named like a rewrite keeps its name), with the
// content they had, and each rename is reported.
func TestWriteResultsFile(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		`..\..\..\evil.txt`: "slip", "line\nbreak": "nl", "-rf": "dash", "%2Drf": "literal",
		"\u202etxt.exe": "bidi", "ok/fine.txt": "fine", "-d/inner": "in", "%2Dd": "file named like the dir's rewrite",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "results.zip")
	renamed, err := WriteResultsFile(dst, dir)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.OpenReader(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	got := map[string]string{}
	var order []string
	for _, f := range zr.File {
		if err := CleanPath(f.Name); err != nil {
			t.Errorf("unclean name in the zip: %v", err)
		}
		rc, _ := f.Open()
		b, _ := io.ReadAll(rc)
		rc.Close()
		got[f.Name] = string(b)
		order = append(order, f.Name)
	}
	if !sort.StringsAreSorted(order) {
		t.Errorf("entries not sorted: %q", order)
	}
	to := map[string]string{}
	for _, r := range renamed {
		to[r.From] = r.To
	}
	for name, body := range files {
		want := name
		if CleanPath(name) != nil {
			want = to[name]
			if want == "" {
				t.Errorf("%q not reported as renamed", name)
				continue
			}
		}
		if got[want] != body {
			t.Errorf("%q stored as %q holds %q, want %q", name, want, got[want], body)
		}
	}
	if len(got) != len(files) || len(renamed) != 5 {
		t.Errorf("%d entries (want %d), %d renames (want 5): %v", len(got), len(files), len(renamed), renamed)
	}
	if to["-d/inner"] != "%2Dd~1/inner" || to["-rf"] != "%2Drf~1" {
		t.Errorf("collisions resolved as %v", renamed)
	}
	// A tree of clean names zips exactly as WriteDirFile does.
	clean := tree(t, map[string]string{"a.txt": "A", "b/c": "C"})
	one, two := filepath.Join(t.TempDir(), "1.zip"), filepath.Join(t.TempDir(), "2.zip")
	if r, err := WriteResultsFile(one, clean); err != nil || len(r) != 0 {
		t.Fatal(r, err)
	}
	if err := WriteDirFile(two, clean); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(one)
	b, _ := os.ReadFile(two)
	if !bytes.Equal(a, b) {
		t.Error("clean results do not zip as WriteDirFile")
	}
}

// FuzzSafePath: whatever the name, its safe form is clean, and a name is
// left alone exactly when it is clean.
func FuzzSafePath(f *testing.F) {
	for _, tc := range nameCases {
		f.Add(tc.name)
	}
	f.Fuzz(func(t *testing.T, name string) {
		safe := SafePath(name)
		if err := CleanPath(safe); err != nil && len(safe) <= 4096 {
			t.Fatalf("SafePath(%q) = %q: %v", name, safe, err)
		}
		if (safe == name) != (CleanPath(name) == nil) {
			t.Fatalf("SafePath(%q) = %q, clean %v", name, safe, CleanPath(name) == nil)
		}
	})
}

// FuzzResultNames: for any set of file paths a directory can hold
// (NUL-separated), the names in the results zip are clean, distinct, and
// no name is another's directory.
func FuzzResultNames(f *testing.F) {
	var all []string
	for _, tc := range nameCases {
		all = append(all, tc.name)
	}
	f.Add(strings.Join(all, "\x00"))
	f.Add("-a\x00%2Da\x00-a~1/x\x00b\\c\x00b%5Cc")
	f.Fuzz(func(t *testing.T, list string) {
		rels := fsPaths(strings.Split(list, "\x00"))
		if rels == nil {
			return
		}
		names := resultNames(rels)
		set := newNameSet()
		for i, n := range names {
			if err := CleanPath(n); err != nil {
				t.Fatalf("%q named %q: %v", rels[i], n, err)
			}
			if set.conflicts(n) {
				t.Fatalf("%q named %q, which conflicts with another name in %q", rels[i], n, names)
			}
			set.add(n)
		}
	})
}

// fsPaths returns rels sorted if a directory could hold regular files at
// exactly those paths (no empty, "." or ".." component, no absolute path,
// no file that is also another's directory, no duplicates), else nil.
func fsPaths(rels []string) []string {
	files, dirs := map[string]bool{}, map[string]bool{}
	for _, r := range rels {
		if r == "" || strings.HasPrefix(r, "/") || len(r) > 4096 || files[r] {
			return nil
		}
		for _, c := range strings.Split(r, "/") {
			if c == "" || c == "." || c == ".." || len(c) > 255 {
				return nil
			}
		}
		files[r] = true
		for d := path.Dir(r); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for r := range files {
		if dirs[r] {
			return nil
		}
	}
	out := append([]string(nil), rels...)
	sort.Strings(out)
	return out
}
