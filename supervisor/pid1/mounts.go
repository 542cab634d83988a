package pid1

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// devMounts runs in the new mount namespace of dev mode: nothing mounted here
// may leak to the host, and /proc must show the new PID namespace.
func devMounts() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("supervise: making mounts private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("supervise: mounting /proc: %w", err)
	}
	return nil
}

// vmSetup is what the real PID 1 of the VM does before anything else:
// mount the API file systems, move an initramfs root into a tmpfs (so that
// pivot_root works for the sandboxes) and set the hostname.
// It reports whether it moved the root: the binary this process runs is
// then the initramfs's, deleted, and its copy is at the same path.
func vmSetup(log *slog.Logger) (moved bool, _ error) {
	var errs []error
	mount := func(src, dst, fstype string, flags uintptr, data string) {
		os.MkdirAll(dst, 0o755)
		if mounted(dst) {
			return
		}
		if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
			errs = append(errs, fmt.Errorf("mounting %s on %s: %w", fstype, dst, err))
		}
	}
	const nse = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	mount("proc", "/proc", "proc", nse, "")
	if isInitramfs() {
		if err := switchRoot(log); err != nil {
			errs = append(errs, err)
		} else {
			moved = true
		}
	}
	mount("sysfs", "/sys", "sysfs", nse, "")
	mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755")
	mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755")
	mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
	if hasFS("cgroup2") {
		mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nse, "")
		// Enable the controllers the children's limits use: without them the
		// table's cgroup limits would not hold.
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory +pids +cpu"), 0); err != nil {
			errs = append(errs, fmt.Errorf("enabling the cgroup controllers: %w", err))
		} else if err := warmCgroupKeys(); err != nil {
			log.Warn("pid1: cgroup static keys not switched on at boot", "err", err)
		} else {
			log.Info("pid1: cgroup static keys switched on before any sandbox", "cgroup", warmCgroup)
		}
	}
	if err := unix.Sethostname([]byte("cvmd")); err != nil {
		errs = append(errs, fmt.Errorf("setting hostname: %w", err))
	}
	return moved, errors.Join(errs...)
}

func mounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func hasFS(name string) bool {
	b, _ := os.ReadFile("/proc/filesystems")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(strings.TrimPrefix(l, "nodev")) == name {
			return true
		}
	}
	return false
}

// isInitramfs reports whether / is the kernel's rootfs (ramfs or tmpfs),
// on which pivot_root fails with EINVAL.
func isInitramfs() bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if ok && len(f) > 4 && f[4] == "/" {
			return strings.HasPrefix(post, "rootfs ") || (strings.HasPrefix(post, "tmpfs ") && f[1] == f[0])
		}
	}
	return false
}

// switchRoot copies the initramfs into a fresh tmpfs and makes it the root
// (like switch_root(8)): mount tmpfs on /newroot, copy each entry and delete
// the original (the initramfs cannot be unmounted; deleting its files is
// what frees their memory, ~33 MB for the test image), move /proc there,
// chdir, mount --move . /, chroot ".".
func switchRoot(log *slog.Logger) error {
	const nr = "/newroot"
	os.MkdirAll(nr, 0o755)
	if err := unix.Mount("tmpfs", nr, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("switch root: tmpfs: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat("/", &st); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	rootDev := st.Dev
	entries, err := os.ReadDir("/")
	if err != nil {
		return fmt.Errorf("switch root: listing the initramfs: %w", err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "proc", "sys", "dev", "run", "newroot":
			os.MkdirAll(filepath.Join(nr, e.Name()), 0o755)
			continue
		}
		if err := copyTree(filepath.Join("/", e.Name()), filepath.Join(nr, e.Name())); err != nil {
			return fmt.Errorf("switch root: copying %s: %w", e.Name(), err)
		}
		freeTree(filepath.Join("/", e.Name()), rootDev)
	}
	if err := unix.Mount("/proc", nr+"/proc", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: moving /proc: %w", err)
	}
	if err := unix.Chdir(nr); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: moving the new root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	unix.Chdir("/")
	log.Info("moved the initramfs root into a tmpfs")
	return nil
}

// freeTree deletes path, once copied, from the old root, never crossing into
// another file system. Failures are ignored: what stays is only memory.
func freeTree(path string, dev uint64) {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil || st.Dev != dev {
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		ents, _ := os.ReadDir(path)
		for _, e := range ents {
			freeTree(filepath.Join(path, e.Name()), dev)
		}
		unix.Rmdir(path)
		return
	}
	unix.Unlink(path)
}

func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case fi.IsDir():
			return os.MkdirAll(target, fi.Mode().Perm())
		case fi.Mode().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
			if err != nil {
				return err
			}
			_, err = io.Copy(out, in)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			return err
		default:
			if st, ok := fi.Sys().(*unix.Stat_t); ok {
				return unix.Mknod(target, st.Mode, int(st.Rdev))
			}
			return nil
		}
	})
}
