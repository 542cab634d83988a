package pid1

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The debug port's storage commands (test images only, see debug.go).

// memoryReport answers "mem": "used_mib=U total_mib=T cached_mib=C
// dirty_mib=D", used being MemTotal-MemAvailable (what a dataset streaming
// into memory would grow; the page cache of a disk is available).
func memoryReport() string {
	m, err := meminfo("/proc/meminfo")
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("used_mib=%d total_mib=%d cached_mib=%d dirty_mib=%d",
		(m["MemTotal"]-m["MemAvailable"])>>10, m["MemTotal"]>>10, m["Cached"]>>10, m["Dirty"]>>10)
}

// meminfo reads /proc/meminfo in KiB.
func meminfo(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err == nil {
			m[k] = n
		}
	}
	return m, sc.Err()
}

// dropCaches answers "drop-caches": everything written reaches the disks,
// then the clean page cache is dropped, so that the next read of a file
// comes from its disk.
func dropCaches() string {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return "error: " + err.Error()
	}
	return "dropped"
}
