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
// Extract refuses entries that would land outside the target (zip-slip),
// absolute names, NUL or backslash in names, links and devices, and stops at
// the caller's caps on entry count and total size (zip bombs).
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
)

// epoch is every entry's modification time.
var epoch = time.Unix(0, 0).UTC()

// WriteDir writes the deterministic zip of dir to w and returns how many
// files it holds.
func WriteDir(w io.Writer, dir string) (int, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("zipdir: listing %s: %w", dir, err)
	}
	sort.Strings(files)
	bw := bufio.NewWriterSize(w, 1<<20)
	zw := zip.NewWriter(bw)
	buf := make([]byte, 1<<20)
	for _, p := range files {
		if err := addFile(zw, dir, p, buf); err != nil {
			return 0, err
		}
	}
	if err := zw.Close(); err != nil {
		return 0, fmt.Errorf("zipdir: finishing zip of %s: %w", dir, err)
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("zipdir: writing zip of %s: %w", dir, err)
	}
	return len(files), nil
}

func addFile(zw *zip.Writer, dir, p string, buf []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		return fmt.Errorf("zipdir: %w", err)
	}
	h, err := zip.FileInfoHeader(info)
	if err != nil {
		return fmt.Errorf("zipdir: header of %s: %w", p, err)
	}
	h.Name = filepath.ToSlash(rel)
	h.Method = zip.Store
	h.Modified = epoch
	ew, err := zw.CreateHeader(h)
	if err != nil {
		return fmt.Errorf("zipdir: adding %s: %w", rel, err)
	}
	if _, err := io.CopyBuffer(ew, f, buf); err != nil {
		return fmt.Errorf("zipdir: adding %s: %w", rel, err)
	}
	return nil
}

// WriteDirFile writes the deterministic zip of dir to a new file at dst
// (created with mode 0600), removing it on failure.
func WriteDirFile(dst, dir string) (err error) {
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
	_, err = WriteDir(f, dir)
	return err
}

// Limits caps an extraction. Zero fields mean the defaults.
type Limits struct {
	MaxEntries int   // default 10 000
	MaxBytes   int64 // total uncompressed bytes; default 16 GiB
}

// Extraction errors callers may branch on.
var (
	// ErrUnsafeEntry: a name that escapes the target, or a link or device.
	ErrUnsafeEntry = errors.New("zipdir: unsafe zip entry")
	// ErrTooLarge: the archive exceeds the Limits.
	ErrTooLarge = errors.New("zipdir: zip exceeds limits")
	// ErrNotZip: the bytes are not a zip archive.
	ErrNotZip = errors.New("zipdir: not a zip archive")
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
		n, err := extractFile(root, name, f, budget, buf)
		if err != nil {
			return err
		}
		budget -= n
	}
	return nil
}

func extractFile(root *os.Root, name string, f *zip.File, budget int64, buf []byte) (int64, error) {
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
	n, err := io.CopyBuffer(out, io.LimitReader(rc, budget+1), buf)
	cerr := out.Close()
	if err != nil {
		return n, fmt.Errorf("zipdir: extracting %q: %v", f.Name, err)
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
