package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
)

// bootFigures are one boot's measurements.
type bootFigures struct {
	kernelToInit float64       // s, PID 1's start time in the guest (/proc/1/stat)
	initToReady  time.Duration // PID 1 start → last child ready
	qemuToReady  time.Duration // host: qemu started → last child ready on serial
	powerOff     time.Duration // host: power button → qemu exited 0
	memUsedMiB   float64       // guest: MemTotal - MemAvailable once every child was ready
}

var allReady = regexp.MustCompile(`msg="all children ready" .*mem_used_mib=([0-9]+)`)

var guestbootStart = regexp.MustCompile(`msg="pid1: start" .*kernel_uptime_s=([0-9.]+) init_start_s=([0-9.]+)`)

// measureBoot boots img with cvmd as PID 1 and no manager, and measures
// from the serial lines: PID 1's start in kernel uptime (printed by
// guestboot), and the host time between guestboot's first line and the last
// "child ready", to which the guest's uptime between PID 1's start and that
// first line is added.
func measureBoot(t *testing.T, img image) bootFigures {
	envDir := t.TempDir()
	os.WriteFile(filepath.Join(envDir, "environment"), []byte("AGENT_LOG_LEVEL=info\n"), 0o644)
	g := boot(t, qemu.Config{Kernel: img.Kernel, Initrd: img.Initrd, TPM: true, EnvDir: envDir, MemoryMiB: 2048})
	i, first := g.wait("boot: guestboot", 0, guestbootStart.String(), 5*time.Minute)
	m := guestbootStart.FindStringSubmatch(first.Text)
	up, _ := strconv.ParseFloat(m[1], 64)
	initStart, _ := strconv.ParseFloat(m[2], 64)
	_, last := g.waitChildrenReady("boot: every child ready", i, children, 5*time.Minute)
	_, mem := g.wait("boot: memory once ready", i, allReady.String(), 30*time.Second)
	used, _ := strconv.ParseFloat(allReady.FindStringSubmatch(mem.Text)[1], 64)
	f := bootFigures{
		kernelToInit: initStart,
		initToReady:  last.At - first.At + time.Duration((up-initStart)*float64(time.Second)),
		qemuToReady:  last.At,
		memUsedMiB:   used,
	}
	f.powerOff = g.powerOff(2 * time.Minute)
	return f
}

func median(ds []float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestBenchVM prints the VM figures (make bench-vm; CVMD_BENCH_VM=1). It
// boots the production image (no debug port) three times, runs the end to
// end once, then boots the production image once as Cocos's manager does.
func TestBenchVM(t *testing.T) {
	if os.Getenv("CVMD_BENCH_VM") != "1" {
		t.Skip("VM benchmarks run with make bench-vm (CVMD_BENCH_VM=1)")
	}
	requireQEMU(t)
	img := buildImage(t, "vmbench", cvmdBinary(t), "")
	for name, path := range map[string]string{"image_initramfs_mib": img.Initrd, "image_kernel_mib": img.Kernel} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("BENCH %s %.1f MiB\n", name, float64(st.Size())/(1<<20))
	}
	var k2i, i2r, ratio, q2r, off, mem []float64
	for n := 0; n < 3; n++ {
		f := measureBoot(t, img)
		t.Logf("boot %d: kernel→init %.2fs, init→ready %v, qemu→ready %v, power-off %v, guest memory used %.0f MiB", n+1, f.kernelToInit, f.initToReady, f.qemuToReady, f.powerOff, f.memUsedMiB)
		k2i = append(k2i, f.kernelToInit)
		i2r = append(i2r, float64(f.initToReady)/float64(time.Millisecond))
		// The kernel's own boot in the same boot is the reference: TCG's
		// speed drifts with the machine's load.
		ratio = append(ratio, f.initToReady.Seconds()/f.kernelToInit)
		q2r = append(q2r, f.qemuToReady.Seconds())
		off = append(off, f.powerOff.Seconds())
		mem = append(mem, f.memUsedMiB)
	}
	fmt.Printf("BENCH vm_kernel_to_init_s %.1f s\n", median(k2i))
	fmt.Printf("BENCH vm_kernel_to_init_ms %.1f ms\n", median(k2i)*1000)
	fmt.Printf("BENCH vm_init_to_ready_ms %.1f ms\n", median(i2r))
	fmt.Printf("BENCH vm_ready_vs_kernel %.2f ratio\n", median(ratio))
	fmt.Printf("BENCH vm_qemu_to_ready_s %.1f s\n", median(q2r))
	fmt.Printf("BENCH vm_poweroff_s %.1f s\n", median(off))
	fmt.Printf("BENCH vm_mem_used_mib %.0f MiB\n", median(mem))
	e2e := runE2E(t)
	fmt.Printf("BENCH vm_e2e_s %.1f s\n", e2e.Seconds())
	// Cocos's manager's VM: OVMF, 4 vCPUs, console=null, a vTPM; ready is
	// when the manager has heard every child.ready.
	t.Run("cocos", func(t *testing.T) {
		c := bootCocos(t, img, cvmdBinary(t), true, "")
		ready := c.waitAllReady("boot: every child ready", 5*time.Minute)
		fmt.Printf("BENCH vm_ovmf_to_ready_s %.1f s\n", ready.Seconds())
		c.terminate()
	})
}
