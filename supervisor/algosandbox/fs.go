package algosandbox

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Logical mount sources of a SandboxRequest. The runner never names a host
// path: it names one of these, and the supervisor resolves it beneath the
// matching host directory with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS),
// then binds the opened object (through /proc/<pid>/fd/<n>), so no symlink
// and no rename race can make a bind point elsewhere.
const (
	srcComputation = "computation" // <state>/computation, written by the agent
	srcWork        = "work"        // <state>/runner, the runner's work dir
	srcCvmd        = "cvmd"        // the cvmd binary (for `cvmd wasm-run`)
)

// logicalPath splits and checks a logical path "computation/<rel>" or
// "work/<rel>" (or exactly "cvmd"). rel is clean, relative, without "..".
func logicalPath(p string) (kind, rel string, err error) {
	if p == srcCvmd {
		return srcCvmd, "", nil
	}
	kind, rel, ok := strings.Cut(p, "/")
	if !ok || (kind != srcComputation && kind != srcWork) {
		return "", "", fmt.Errorf("path %q: want computation/<path>, work/<path> or cvmd", p)
	}
	if rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || rel == "." {
		return "", "", fmt.Errorf("path %q: want a clean relative path after %s/", p, kind)
	}
	for _, c := range strings.Split(rel, "/") {
		if c == ".." {
			return "", "", fmt.Errorf("path %q: \"..\" not allowed", p)
		}
	}
	return kind, rel, nil
}

// openBeneath opens rel beneath dir as an O_PATH fd, refusing symlinks on
// the whole way and any escape from dir.
func openBeneath(dir, rel string) (*os.File, error) {
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: filepath.Join(dir, rel), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, rel)), nil
}

// procFDPath names f for a bind mount made by another process of ours.
func procFDPath(f *os.File) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()) }

// mountResults mounts a tmpfs capped at size bytes on dir, owned by uid:gid.
// The cap is the kernel's: a write past it fails with ENOSPC inside the
// sandbox, and nothing beyond the cap ever reaches the disk.
func mountResults(dir string, size int64, uid, gid int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data := fmt.Sprintf("size=%d,nr_inodes=%d,mode=0700,uid=%d,gid=%d", size, ResultsFiles(size), uid, gid)
	if err := unix.Mount("cvmd-results", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return fmt.Errorf("mounting results tmpfs on %s: %w", dir, err)
	}
	return nil
}

// ResultsFiles is how many files and directories a results directory of
// capBytes may hold: one per 64 KiB of the cap (the scratch file system's
// own inode density), at least 4096. Empty files take no blocks, so the
// byte cap alone does not bound them: without this an algorithm fills the
// state file system's inodes (on the disk) or the supervisor's memory with
// their copies (in memory). pid1.ResultsArea gives its project quotas the
// same file limit.
func ResultsFiles(capBytes int64) uint64 {
	return uint64(max(capBytes>>16, 4096))
}

// resultsUsage reports the bytes used in the results tmpfs and whether it
// is full: no block or no file left.
func resultsUsage(dir string) (used uint64, full bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false, err
	}
	bs := uint64(st.Bsize)
	return (st.Blocks - st.Bfree) * bs, st.Bavail == 0 || st.Ffree == 0, nil
}

// resultsOverCap is copyResults' refusal: the files' sizes add up to more
// than the cap, whatever blocks they take.
type resultsOverCap struct{ bytes int64 }

func (e *resultsOverCap) Error() string {
	return fmt.Sprintf("results of %d bytes are over the cap", e.bytes)
}

// resultsSize adds up the sizes of the regular files under root. A sparse
// file's size counts, not the blocks it takes: the copy and the results
// zip are as large as the size, so a file truncated to a terabyte (no
// blocks, nothing against the tmpfs size or the project quota) would
// otherwise be written out in full as zeros on the state disk or in the
// guest's memory.
func resultsSize(root *os.Root) (int64, error) {
	var total int64
	err := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		return nil
	})
	return total, err
}

// copyResults copies the regular files and directories under src into dst
// (both through os.Root, so nothing the algorithm left, symlinks included,
// can make the copy escape), giving them to the owner of dst. Symlinks and
// special files are skipped and counted. Files whose sizes add up to more
// than limit are not copied at all (*resultsOverCap).
func copyResults(src, dst string, limit int64) (skipped int, err error) {
	sr, err := os.OpenRoot(src)
	if err != nil {
		return 0, err
	}
	defer sr.Close()
	total, err := resultsSize(sr)
	if err != nil {
		return 0, err
	}
	if total > limit {
		return 0, &resultsOverCap{bytes: total}
	}
	dr, err := os.OpenRoot(dst)
	if err != nil {
		return 0, err
	}
	defer dr.Close()
	st, err := dr.Stat(".")
	if err != nil {
		return 0, err
	}
	uid, gid := ownerOf(st)
	err = fs.WalkDir(sr.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		switch {
		case d.IsDir():
			if err := dr.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			return dr.Lchown(p, uid, gid)
		case d.Type().IsRegular():
			in, err := sr.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			defer in.Close()
			dr.Remove(p)
			out, err := dr.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			// The sizes were added up above; a file that grew since is cut
			// at the cap rather than copied on.
			n, err := io.Copy(out, io.LimitReader(in, limit+1))
			if err == nil && n > limit {
				err = &resultsOverCap{bytes: n}
			}
			if err != nil {
				out.Close()
				return err
			}
			limit -= n
			if err := out.Close(); err != nil {
				return err
			}
			return dr.Lchown(p, uid, gid)
		default:
			skipped++
			return nil
		}
	})
	return skipped, err
}

// chownTree gives dir and everything under it (not following symlinks) to uid:gid.
func chownTree(dir string, uid, gid int) error {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	return fs.WalkDir(r.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return r.Lchown(p, uid, gid)
	})
}

func ownerOf(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return 0, 0
}

// bindOpened bind-mounts src (a /proc/<pid>/fd/<n> of an O_PATH fd) onto a
// fresh mount point dir/<i> (a file or a directory like src) and returns it.
func bindOpened(dir string, i int, src string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	target := filepath.Join(dir, fmt.Sprint(i))
	if fi.IsDir() {
		err = os.Mkdir(target, 0o700)
	} else {
		var f *os.File
		if f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return "", err
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("binding %s: %w", src, err)
	}
	return target, nil
}

// cleanRunDir detaches every mount under dir (deepest first) and removes
// what is left of it.
func cleanRunDir(dir string) error {
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return err
	}
	var mounts []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmounting %s: %w", m, err)
		}
	}
	return os.RemoveAll(dir)
}
