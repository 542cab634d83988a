// Package zipdir writes the deterministic zip of a directory that Cocos
// hashes and ships (directory datasets, results), and extracts uploaded zips
// safely.
//
// The archive is byte-for-byte what Cocos's Go code produces: only regular
// files (no directory entries), in lexicographic order of their full path,
// named by their slash-separated path relative to the directory, method
// Store, modification time the Unix epoch (so Go writes the 0x5455 extended
// timestamp), Unix mode bits from the file (permissions change the bytes),
// and Go's data-descriptor flag. One difference: the epoch is taken in UTC,
// where Cocos uses the local zone; the two agree whenever TZ is UTC (as in a
// CVM), and ours does not depend on where the CLI runs. Symlinks and other
// non-regular files are skipped, so a results directory cannot smuggle out
// files by link.
//
// WriteResultsFile is the same archive for files someone else's code named
// (an algorithm's results): every entry name is made a clean relative path
// (CleanPath: no "..", backslash, colon, control or formatting character,
// invalid UTF-8 or leading "-" in any component), rewriting the others with
// SafePath's %XX escapes, kept distinct from every other name, and reported.
//
// Extract refuses entries that would land outside the target (zip-slip),
// absolute names, NUL or backslash in names, links and devices, and stops at
// the caller's caps on entry count and total size (zip bombs) and, as it
// writes, when the caller's Room (free space above a floor) runs out.
//
// Imported by the agent, the CLI and the development manager; it imports
// only the standard library.
package zipdir

import (
	"archive/zip"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// epoch is every entry's modification time.
var epoch = time.Unix(0, 0).UTC()

// WriteDir writes the deterministic zip of dir to w and returns how many
// files it holds. Entry names are the files' relative paths as they are
// (Cocos's rule; a dataset's hash depends on them).
func WriteDir(w io.Writer, dir string) (int, error) {
	entries, err := listFiles(dir)
	if err != nil {
		return 0, err
	}
	return len(entries), writeEntries(w, dir, entries)
}

// entry is one file of a directory zip: its path relative to the directory
// (slash-separated) and its name in the archive.
type entry struct{ rel, name string }

// listFiles returns the regular files under dir, named by their relative
// path, sorted by it.
func listFiles(dir string) ([]entry, error) {
	var files []entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			rel = filepath.ToSlash(rel)
			files = append(files, entry{rel: rel, name: rel})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("zipdir: listing %s: %w", dir, err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	return files, nil
}

func writeEntries(w io.Writer, dir string, entries []entry) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	zw := zip.NewWriter(bw)
	buf := make([]byte, 1<<20)
	for _, e := range entries {
		if err := addFile(zw, dir, e, buf); err != nil {
			return err
		}
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zipdir: finishing zip of %s: %w", dir, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("zipdir: writing zip of %s: %w", dir, err)
	}
	return nil
}

func addFile(zw *zip.Writer, dir string, e entry, buf []byte) error {
	p := filepath.Join(dir, filepath.FromSlash(e.rel))
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	h, err := zip.FileInfoHeader(info)
	if err != nil {
		return fmt.Errorf("zipdir: header of %s: %w", p, err)
	}
	h.Name = e.name
	h.Method = zip.Store
	h.Modified = epoch
	ew, err := zw.CreateHeader(h)
	if err != nil {
		return fmt.Errorf("zipdir: adding %s: %w", e.name, err)
	}
	if _, err := io.CopyBuffer(ew, f, buf); err != nil {
		return fmt.Errorf("zipdir: adding %s: %w", e.name, err)
	}
	return nil
}

// WriteDirFile writes the deterministic zip of dir to a new file at dst
// (created with mode 0600), removing it on failure.
func WriteDirFile(dst, dir string) error {
	entries, err := listFiles(dir)
	if err != nil {
		return err
	}
	return writeFile(dst, dir, entries)
}

func writeFile(dst, dir string, entries []entry) (err error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("zipdir: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	return writeEntries(f, dir, entries)
}

// Renamed is a file whose path was not a clean name and is stored under
// another one.
type Renamed struct{ From, To string }

// WriteResultsFile is WriteDirFile for what someone else's code wrote (an
// algorithm's results): every entry name is made clean (see CleanPath and
// SafePath), and the renames are returned in archive order so the caller
// can say what it did. Clean names are kept as they are, so a results zip
// of clean names is byte for byte WriteDirFile's.
func WriteResultsFile(dst, dir string) ([]Renamed, error) {
	entries, err := listFiles(dir)
	if err != nil {
		return nil, err
	}
	rels := make([]string, len(entries))
	for i, e := range entries {
		rels[i] = e.rel
	}
	var renamed []Renamed
	for i, name := range resultNames(rels) {
		if name != entries[i].rel {
			renamed = append(renamed, Renamed{From: entries[i].rel, To: name})
		}
		entries[i].name = name
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	sort.Slice(renamed, func(i, j int) bool { return renamed[i].To < renamed[j].To })
	return renamed, writeFile(dst, dir, entries)
}

// resultNames names the files at rels (the paths of a directory's regular
// files) in a results archive: clean paths as they are, the others by
// SafePath, made unique against every other name. It is pure, so the
// naming can be fuzzed without files.
func resultNames(rels []string) []string {
	names := newNameSet()
	for _, r := range rels {
		if CleanPath(r) == nil {
			names.add(r)
		}
	}
	out := make([]string, len(rels))
	for i, r := range rels {
		if CleanPath(r) == nil {
			out[i] = r
			continue
		}
		out[i] = names.unique(r)
		names.add(out[i])
	}
	return out
}

// nameSet is the files and directories of an archive being named.
type nameSet struct{ files, dirs map[string]bool }

func newNameSet() *nameSet { return &nameSet{files: map[string]bool{}, dirs: map[string]bool{}} }

func (n *nameSet) add(name string) {
	n.files[name] = true
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		n.dirs[d] = true
	}
}

// conflicts reports whether name cannot be added: it is taken by a file or
// a directory, or one of its parents is a file.
func (n *nameSet) conflicts(name string) bool {
	if n.files[name] || n.dirs[name] {
		return true
	}
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if n.files[d] {
			return true
		}
	}
	return false
}

// unique returns SafePath(rel), or if that conflicts with a name already in
// the set, the same with "~N" added to its first rewritten component (so
// the renamed subtree stays together).
func (n *nameSet) unique(rel string) string {
	safe := SafePath(rel)
	if !n.conflicts(safe) {
		return safe
	}
	parts, orig := strings.Split(safe, "/"), strings.Split(rel, "/")
	k := 0
	for k < len(parts)-1 && parts[k] == orig[k] {
		k++
	}
	base := parts[k]
	for i := 1; ; i++ {
		parts[k] = fmt.Sprintf("%s~%d", base, i)
		if name := strings.Join(parts, "/"); !n.conflicts(name) {
			return name
		}
	}
}

// ErrUncleanName: a name that is not a clean relative path (CleanPath).
var ErrUncleanName = errors.New("zipdir: not a clean relative path")

// CleanPath reports whether name is a clean relative path that any tool
// extracts to the file it names and nothing else, on any system, and that
// no shell or log mistakes for something else: slash-separated components,
// none empty, "." or "..", none starting with "-" (an option to the tool
// that receives it), and no backslash or colon (Windows separators and
// drive or stream names), no control or invisible formatting character
// (newlines, escapes, bidirectional overrides) and no invalid UTF-8.
func CleanPath(name string) error {
	if name == "" || len(name) > 4096 {
		return fmt.Errorf("%w: %q", ErrUncleanName, name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" || c == "." || c == ".." || c[0] == '-' {
			return fmt.Errorf("%w: %q", ErrUncleanName, name)
		}
		for _, r := range c {
			if unsafeRune(r) {
				return fmt.Errorf("%w: %q", ErrUncleanName, name)
			}
		}
	}
	return nil
}

// unsafeRune reports whether r may not appear in a clean name.
func unsafeRune(r rune) bool {
	return r == utf8.RuneError || r == '\\' || r == ':' || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}

// SafePath returns name with every component made clean: each byte of an
// unsafe character (or of invalid UTF-8), and a leading "-", become %XX,
// and so does "%" in a component that needed it, so that two different
// unclean names never map to the same safe one. A clean name is returned
// as it is. Components that are empty, "." or ".." (which a directory walk
// never yields) become "%2E"-style names too.
func SafePath(name string) string {
	if CleanPath(name) == nil {
		return name
	}
	parts := strings.Split(name, "/")
	for i, c := range parts {
		parts[i] = safeComponent(c)
	}
	return strings.Join(parts, "/")
}

func safeComponent(c string) string {
	if c == "" {
		return "%00"
	}
	if c == "." || c == ".." {
		return strings.Repeat("%2E", len(c))
	}
	if CleanPath(c) == nil {
		return c
	}
	var b strings.Builder
	for i := 0; i < len(c); {
		r, size := utf8.DecodeRuneInString(c[i:])
		if (i == 0 && r == '-') || r == '%' || unsafeRune(r) {
			for _, x := range []byte(c[i : i+size]) {
				fmt.Fprintf(&b, "%%%02X", x)
			}
		} else {
			b.WriteString(c[i : i+size])
		}
		i += size
	}
	return b.String()
}

// Limits caps an extraction. Zero fields mean the defaults.
type Limits struct {
	MaxEntries int   // default 10 000
	MaxBytes   int64 // total uncompressed bytes; default 16 GiB
	// Room, if set, says how many more bytes may be written now (e.g. the
	// free space above the caller's floor). Extract asks before it starts
	// (and refuses an archive whose declared size does not fit), then again
	// each time it has written what the last answer allowed, at most
	// roomCheckEvery bytes apart, and stops with ErrNoRoom before it would
	// write past it. An error from Room stops the extraction with it.
	Room func() (int64, error)
}

// roomCheckEvery is the most Extract writes between two calls of Room.
const roomCheckEvery = 16 << 20

// Extraction errors callers may branch on.
var (
	// ErrUnsafeEntry: a name that escapes the target, or a link or device.
	ErrUnsafeEntry = errors.New("zipdir: unsafe zip entry")
	// ErrTooLarge: the archive exceeds the Limits.
	ErrTooLarge = errors.New("zipdir: zip exceeds limits")
	// ErrNotZip: the bytes are not a zip archive.
	ErrNotZip = errors.New("zipdir: not a zip archive")
	// ErrNoRoom: Limits.Room said there is no room for what is left.
	ErrNoRoom = errors.New("zipdir: no room left to extract")
)

// Extract unpacks the zip archive src (size bytes) into the existing
// directory dest. Entries are written through an os.Root, so nothing can be
// created outside dest even through a link. On error, what was extracted so
// far stays: the caller removes dest.
func Extract(src io.ReaderAt, size int64, dest string, lim Limits) error {
	if lim.MaxEntries == 0 {
		lim.MaxEntries = 10000
	}
	if lim.MaxBytes == 0 {
		lim.MaxBytes = 16 << 30
	}
	zr, err := zip.NewReader(src, size)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotZip, err)
	}
	if len(zr.File) > lim.MaxEntries {
		return fmt.Errorf("%w: %d entries, at most %d allowed", ErrTooLarge, len(zr.File), lim.MaxEntries)
	}
	var declared uint64
	for _, f := range zr.File {
		declared += f.UncompressedSize64
		if declared > uint64(lim.MaxBytes) {
			return fmt.Errorf("%w: more than %d bytes uncompressed", ErrTooLarge, lim.MaxBytes)
		}
		if _, err := CleanName(f.Name); err != nil {
			return err
		}
	}
	room := &roomWriter{room: lim.Room}
	if err := room.need(int64(declared)); err != nil {
		return err
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	defer root.Close()
	budget := lim.MaxBytes
	buf := make([]byte, 1<<20)
	for _, f := range zr.File {
		name, _ := CleanName(f.Name)
		mode := f.Mode()
		switch {
		case mode.IsDir():
			if err := root.MkdirAll(name, 0o750); err != nil {
				return fmt.Errorf("zipdir: %w", err)
			}
			continue
		case !mode.IsRegular():
			return fmt.Errorf("%w: %q is a %s", ErrUnsafeEntry, f.Name, typeName(mode))
		}
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o750); err != nil {
				return fmt.Errorf("zipdir: %w", err)
			}
		}
		n, err := extractFile(root, name, f, budget, buf, room)
		if err != nil {
			return err
		}
		budget -= n
	}
	return nil
}

// roomWriter asks Limits.Room for room as bytes are written to out.
type roomWriter struct {
	room    func() (int64, error)
	allowed int64 // bytes that may still be written before asking again
	out     io.Writer
}

// need makes sure n more bytes may be written (asking Room once), or says
// why not. With Room nil there is always room.
func (w *roomWriter) need(n int64) error {
	if w.room == nil || n <= w.allowed {
		return nil
	}
	r, err := w.room()
	if err != nil {
		return err
	}
	w.allowed = min(r, roomCheckEvery)
	if n > r {
		return fmt.Errorf("%w: %d bytes to write, room for %d", ErrNoRoom, n, max(r, 0))
	}
	return nil
}

func (w *roomWriter) Write(b []byte) (int, error) {
	if w.room != nil {
		if err := w.need(int64(len(b))); err != nil {
			return 0, err
		}
		w.allowed -= int64(len(b))
	}
	return w.out.Write(b)
}

func extractFile(root *os.Root, name string, f *zip.File, budget int64, buf []byte, room *roomWriter) (int64, error) {
	rc, err := f.Open()
	if err != nil {
		return 0, fmt.Errorf("zipdir: opening entry %q: %v", f.Name, err)
	}
	defer rc.Close()
	perm := f.Mode().Perm() & 0o755
	if perm == 0 {
		perm = 0o640
	}
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, fmt.Errorf("zipdir: extracting %q: %w", f.Name, err)
	}
	// Count real bytes, not the declared size: a lying header is a bomb too.
	room.out = out
	n, err := io.CopyBuffer(room, io.LimitReader(rc, budget+1), buf)
	cerr := out.Close()
	if errors.Is(err, ErrNoRoom) {
		return n, err
	}
	if err != nil {
		// %w: a full disk (ENOSPC) must stay recognisable to the caller.
		return n, fmt.Errorf("zipdir: extracting %q: %w", f.Name, err)
	}
	if cerr != nil {
		return n, fmt.Errorf("zipdir: extracting %q: %w", f.Name, cerr)
	}
	if n > budget {
		return n, fmt.Errorf("%w: more than the allowed bytes uncompressed", ErrTooLarge)
	}
	return n, nil
}

// CleanName returns the cleaned relative path of a zip entry name, or
// ErrUnsafeEntry when it is empty, absolute, has NUL or backslash, or climbs
// out with "..".
func CleanName(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "\x00\\") || path.IsAbs(name) {
		return "", fmt.Errorf("%w: name %q", ErrUnsafeEntry, name)
	}
	c := path.Clean(name)
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: name %q", ErrUnsafeEntry, name)
	}
	return c, nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	default:
		return "special file"
	}
}
