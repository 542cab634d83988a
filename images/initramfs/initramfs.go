// Package initramfs writes a directory tree as a reproducible initramfs: a
// "newc" cpio archive in sorted path order, every entry owned by root with
// one fixed modification time and inode numbers given in that order, so the
// same tree gives the same bytes on every build (the bytes are what an
// SEV-SNP launch or a measured boot hashes).
//
// It writes directories, regular files, symlinks and device nodes; hard
// links are written as separate files. It does not compress: callers wrap
// the writer (images/cmd/mkinitramfs uses gzip with no name or time). Only
// the image build imports it.
package initramfs

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Entry is one archive member.
type Entry struct {
	// Name is the path inside the archive, without a leading slash ("init",
	// "usr/lib/x"). "." is the root directory.
	Name string
	// Mode holds the file type bits (S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR,
	// S_IFBLK) and the permission bits.
	Mode uint32
	// Data is a regular file's content or a symlink's target.
	Data []byte
	// Source, when Data is nil for a regular file, is read at write time
	// (so large files are never held in memory).
	Source string
	// Size of Source.
	Size int64
	// RdevMajor and RdevMinor are a device node's numbers.
	RdevMajor, RdevMinor uint32
}

// File type bits of a cpio mode (the same as Linux's).
const (
	TypeDir  = 0o040000
	TypeReg  = 0o100000
	TypeLink = 0o120000
	TypeChr  = 0o020000
	TypeBlk  = 0o060000
)

// FromDir lists every entry under root, sorted by name, taking permission
// bits from the files. Ownership and times are not read: the archive gives
// all entries the same ones.
func FromDir(root string) ([]Entry, error) {
	var out []Entry
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(info.Mode().Perm())
		if info.Mode()&fs.ModeSetuid != 0 {
			perm |= 0o4000
		}
		if info.Mode()&fs.ModeSetgid != 0 {
			perm |= 0o2000
		}
		if info.Mode()&fs.ModeSticky != 0 {
			perm |= 0o1000
		}
		e := Entry{Name: filepath.ToSlash(rel)}
		switch t := info.Mode().Type(); {
		case t == 0:
			e.Mode, e.Source, e.Size = TypeReg|perm, path, info.Size()
		case t == fs.ModeDir:
			e.Mode = TypeDir | perm
		case t == fs.ModeSymlink:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			e.Mode, e.Data = TypeLink|0o777, []byte(target)
		default:
			return fmt.Errorf("initramfs: %s: unsupported file type %v", rel, t)
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("initramfs: walking %s: %w", root, err)
	}
	return out, nil
}

// Sort orders entries by name so that a parent directory precedes its
// children; it is the order the kernel needs and the one that makes the
// archive reproducible.
func Sort(es []Entry) {
	sort.SliceStable(es, func(i, j int) bool { return less(es[i].Name, es[j].Name) })
}

// less compares path components, so "a/b" sorts before "a-b" ("a" < "a-b").
func less(a, b string) bool {
	ac, bc := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(ac) && i < len(bc); i++ {
		if ac[i] != bc[i] {
			if ac[i] == "." {
				return true
			}
			if bc[i] == "." {
				return false
			}
			return ac[i] < bc[i]
		}
	}
	return len(ac) < len(bc)
}

// Write writes the entries, in the order given, as a newc archive with the
// trailer, all with modification time mtime (seconds since the epoch).
// Duplicate names are refused.
func Write(w io.Writer, es []Entry, mtime int64) error {
	seen := make(map[string]bool, len(es))
	for i, e := range es {
		if seen[e.Name] {
			return fmt.Errorf("initramfs: duplicate entry %q", e.Name)
		}
		seen[e.Name] = true
		if err := writeEntry(w, uint32(i+1), e, mtime); err != nil {
			return err
		}
	}
	return writeHeader(w, 0, Entry{Name: "TRAILER!!!"}, 0, 0)
}

func writeEntry(w io.Writer, ino uint32, e Entry, mtime int64) error {
	size := int64(len(e.Data))
	var src *os.File
	if e.Mode&0o170000 == TypeReg && e.Data == nil && e.Source != "" {
		f, err := os.Open(e.Source)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		src, size = f, st.Size()
	}
	if err := writeHeader(w, ino, e, mtime, size); err != nil {
		return err
	}
	var n int64
	var err error
	if src != nil {
		n, err = io.Copy(w, src)
		if err == nil && n != size {
			err = fmt.Errorf("%s changed size while being written", e.Source)
		}
	} else {
		var m int
		m, err = w.Write(e.Data)
		n = int64(m)
	}
	if err != nil {
		return fmt.Errorf("initramfs: writing %s: %w", e.Name, err)
	}
	return pad(w, n)
}

func writeHeader(w io.Writer, ino uint32, e Entry, mtime, size int64) error {
	nlink := 1
	if e.Mode&0o170000 == TypeDir {
		nlink = 2
	}
	name := e.Name + "\x00"
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.Mode, 0, 0, nlink, uint32(mtime), uint32(size), 0, 0, e.RdevMajor, e.RdevMinor, len(name), 0)
	if _, err := io.WriteString(w, hdr+name); err != nil {
		return fmt.Errorf("initramfs: writing header of %s: %w", e.Name, err)
	}
	return pad(w, int64(len(hdr)+len(name)))
}

var zeros [4]byte

// pad writes the zeros that align the next field to 4 bytes.
func pad(w io.Writer, n int64) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(zeros[:4-r])
		return err
	}
	return nil
}
