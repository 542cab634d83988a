// Command scratchbench is a stand-in /init that measures the scratch disk's
// cost in one boot: it loads the image's modules, makes a volume of each
// layout pid1.FormatVolume knows on the disk whose serial names it
// (bench-plain, bench-crypt, bench-aead; pid1.LayoutAEAD is what the VM
// uses), and a tmpfs, then writes and reads a file on each, interleaved,
// and prints one line per layout and round:
//
//	scratchbench: result layout=aead round=1 write_mib_s=12.3 read_mib_s=45.6
//
// then "scratchbench: done" and powers off. The file is written in 1 MiB
// writes then fdatasync'd; it is read back after the page cache is dropped
// (a tmpfs keeps it in memory: its figure is memory's speed). The size is
// scratchbench.mib=N on the kernel command line (default 128), the rounds
// scratchbench.rounds=N (default 2). Built only into the benchmark's image
// by tests/vm.
package main

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/supervisor/pid1"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	fmt.Println("scratchbench: start")
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}, {"tmpfs", "/run", "tmpfs"},
	} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fs, unix.MS_NOSUID, ""); err != nil && err != unix.EBUSY {
			fail("mounting %s: %v", m.dir, err)
		}
	}
	if err := pid1.LoadModules(log); err != nil {
		fmt.Printf("scratchbench: modules: %v\n", err)
	}
	if err := pid1.LoadScratchModules(log); err != nil {
		fmt.Printf("scratchbench: modules: %v\n", err)
	}
	b, _ := os.ReadFile("/proc/cmdline")
	cmd := pid1.ParseCmdline(string(b))
	mib := param(cmd, "scratchbench.mib", 128)
	rounds := param(cmd, "scratchbench.rounds", 2)

	disks, err := pid1.Disks("/sys/block")
	if err != nil {
		fail("%v", err)
	}
	type target struct{ name, dir string }
	var targets []target
	os.MkdirAll("/mnt/tmpfs", 0o755)
	if err := unix.Mount("tmpfs", "/mnt/tmpfs", "tmpfs", 0, fmt.Sprintf("size=%dm", mib+16)); err != nil {
		fail("tmpfs: %v", err)
	}
	targets = append(targets, target{"tmpfs", "/mnt/tmpfs"})
	for _, l := range []pid1.Layout{pid1.LayoutPlain, pid1.LayoutCrypt, pid1.LayoutAEAD} {
		d, ok := pid1.FindDisk(pid1.ScratchChoice{Serial: "bench-" + l.String()}, disks)
		if !ok {
			fail("no disk with serial bench-%s", l)
		}
		dir := "/mnt/" + l.String()
		start := time.Now()
		if _, err := pid1.FormatVolume(log, d, dir, l); err != nil {
			fail("volume %s: %v", l, err)
		}
		fmt.Printf("scratchbench: format layout=%s ms=%d\n", l, time.Since(start).Milliseconds())
		targets = append(targets, target{l.String(), dir})
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	for r := 1; r <= rounds; r++ {
		for _, t := range targets {
			w, rd, err := measure(filepath.Join(t.dir, "bench.bin"), data, mib)
			if err != nil {
				fail("%s: %v", t.name, err)
			}
			fmt.Printf("scratchbench: result layout=%s round=%d write_mib_s=%.1f read_mib_s=%.1f\n", t.name, r, w, rd)
		}
	}
	fmt.Println("scratchbench: done")
	powerOff()
}

// measure writes mib MiB to path and reads them back, in MiB/s.
func measure(path string, data []byte, mib int) (write, read float64, err error) {
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for i := 0; i < mib; i++ {
		if _, err := f.Write(data); err != nil {
			f.Close()
			return 0, 0, err
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return 0, 0, err
	}
	write = float64(mib) / time.Since(start).Seconds()
	f.Close()
	unix.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	f, err = os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start = time.Now()
	n := 0
	for {
		k, err := f.Read(buf)
		n += k
		if err != nil {
			break
		}
	}
	if n != mib<<20 {
		return 0, 0, fmt.Errorf("read %d bytes back, wrote %d", n, mib<<20)
	}
	read = float64(mib) / time.Since(start).Seconds()
	os.Remove(path)
	return write, read, nil
}

func param(c pid1.Cmdline, key string, def int) int {
	if n, err := strconv.Atoi(c.Get(key)); err == nil && n > 0 {
		return n
	}
	return def
}

func fail(format string, args ...any) {
	fmt.Printf("scratchbench: fail "+format+"\n", args...)
	powerOff()
}

func powerOff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
