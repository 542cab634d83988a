package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// CgroupDirs reads /proc/thread-self, not /proc/self: libcontainer runs a
// goroutine locked to its thread in the container's mount namespace and
// never unlocks it; when that happens on the main thread, the thread stays
// there, wedged, and /proc/self/mountinfo (the leader's) shows the
// container's mounts.

// CgroupDirs returns the directories of the relative cgroup path rel (nested
// under this process's own cgroup) in every mounted hierarchy, v1 and v2,
// whether or not they exist.
func CgroupDirs(rel string) ([]string, error) {
	own, err := ownCgroups()
	if err != nil {
		return nil, err
	}
	mi, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("sandbox: reading mountinfo: %w", err)
	}
	var dirs []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(mi), "\n") {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, p := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(p) < 3 {
			continue
		}
		root, mnt := f[3], f[4]
		var ownPath string
		switch p[0] {
		case "cgroup2":
			ownPath, ok = own[""]
		case "cgroup":
			ownPath, ok = "", false
			for _, opt := range strings.Split(p[2], ",") {
				if v, found := own[opt]; found {
					ownPath, ok = v, true
					break
				}
			}
		default:
			continue
		}
		if !ok {
			continue
		}
		// The part of our own path below the mount's root.
		sub := strings.TrimPrefix(ownPath, root)
		if root != "/" && !strings.HasPrefix(ownPath, root) {
			sub = "/" // our cgroup is outside this mount's view (a cgroup namespace): use its root
		}
		d := filepath.Join(mnt, sub, rel)
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// ownCgroups maps each v1 controller (and "name=x" hierarchy) to this
// process's cgroup path in it; "" is the v2 path.
func ownCgroups() (map[string]string, error) {
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("sandbox: reading /proc/thread-self/cgroup: %w", err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			m[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			m[c] = parts[2]
		}
	}
	return m, nil
}

// RemoveCgroupTree kills every process in the cgroup tree rel (relative to
// this process's own cgroup, in every hierarchy) and removes its
// directories, deepest first. PID 1 uses it when the supervisor proper had
// to be killed before it could clean up.
func RemoveCgroupTree(rel string) error { return removeCgroupTree(rel) }

func removeCgroupTree(rel string) error {
	dirs, err := CgroupDirs(rel)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if err := removeTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeTree(dir string) error {
	var all []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			all = append(all, p)
		}
		return nil
	})
	if len(all) == 0 {
		return nil
	}
	deadline := time.Now().Add(2 * time.Second)
	for i := len(all) - 1; i >= 0; i-- {
		for {
			killProcs(all[i])
			err := unix.Rmdir(all[i])
			if err == nil || err == unix.ENOENT {
				break
			}
			if err != unix.EBUSY || time.Now().After(deadline) {
				return fmt.Errorf("sandbox: removing cgroup %s: %w", all[i], err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

func killProcs(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, l := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(l); err == nil && pid > 0 {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// oomKilled reads the OOM kill counter of c's memory cgroup.
func oomKilled(c *libcontainer.Container) bool {
	st, err := c.State()
	if err != nil {
		return false
	}
	for _, key := range []string{"memory", ""} {
		dir, ok := st.CgroupPaths[key]
		if !ok {
			continue
		}
		for _, file := range []string{"memory.events", "memory.oom_control"} {
			b, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
					n, _ := strconv.Atoi(strings.TrimSpace(v))
					return n > 0
				}
			}
		}
	}
	return false
}
