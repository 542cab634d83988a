package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
)

// sparseDisk makes a sparse raw disk image of size bytes.
func sparseDisk(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

var scratchResult = regexp.MustCompile(`scratchbench: result layout=(\S+) round=(\d+) write_mib_s=([0-9.]+) read_mib_s=([0-9.]+)`)

// scratchFigures boots the scratchbench probe with one disk per layout and
// returns, per layout, the best write and read rate (MiB/s) of its rounds.
func scratchFigures(t *testing.T, mib, rounds int) (write, read map[string]float64) {
	probe := goBuild(t, t.TempDir(), "./images/cmd/scratchbench", "scratchbench", []string{"CGO_ENABLED=0"}, "-trimpath")
	img := buildImage(t, "vmbench-scratch", probe, "", "SOURCE_DATE_EPOCH=1700000000", "IMAGE_VERSION=test")
	dir := t.TempDir()
	size := int64(mib)<<20 + 256<<20
	var disks []qemu.Disk
	for _, l := range []string{"plain", "crypt", "aead"} {
		disks = append(disks, qemu.Disk{Path: sparseDisk(t, dir, l+".img", size), Serial: "bench-" + l})
	}
	g := boot(t, qemu.Config{Kernel: img.Kernel, Initrd: img.Initrd, MemoryMiB: 1024, Disks: disks,
		Append: fmt.Sprintf("scratchbench.mib=%d scratchbench.rounds=%d", mib, rounds)})
	g.wait("scratch benchmark", 0, `scratchbench: (done|fail)`, 20*time.Minute)
	if s := g.vm.Grep(regexp.MustCompile(`scratchbench: fail`)); s != "" {
		g.fatalf("scratch benchmark", "%s", s)
	}
	write, read = map[string]float64{}, map[string]float64{}
	for _, l := range g.vm.Lines() {
		m := scratchResult.FindStringSubmatch(l.Text)
		if m == nil {
			continue
		}
		w, _ := strconv.ParseFloat(m[3], 64)
		r, _ := strconv.ParseFloat(m[4], 64)
		write[m[1]] = max(write[m[1]], w)
		read[m[1]] = max(read[m[1]], r)
	}
	t.Logf("scratch volumes (MiB/s, best of %d rounds of %d MiB): write %v, read %v\n%s", rounds, mib, write, read,
		g.vm.Grep(regexp.MustCompile(`scratchbench: (format|result)`)))
	return write, read
}

// TestBenchScratch prints the scratch disk's throughput beside a tmpfs, a
// plain ext4 volume and a crypt-only one, measured in the same boot, and
// the ratios (make bench-vm).
func TestBenchScratch(t *testing.T) {
	if os.Getenv("CVMD_BENCH_VM") != "1" {
		t.Skip("VM benchmarks run with make bench-vm (CVMD_BENCH_VM=1)")
	}
	requireQEMU(t)
	w, r := scratchFigures(t, 128, 3)
	for _, l := range []string{"tmpfs", "plain", "crypt", "aead"} {
		if w[l] == 0 || r[l] == 0 {
			t.Fatalf("no figure for layout %s: write %v read %v", l, w, r)
		}
	}
	fmt.Printf("BENCH vm_scratch_write_mib_s %.1f MiB/s\n", w["aead"])
	fmt.Printf("BENCH vm_scratch_read_mib_s %.1f MiB/s\n", r["aead"])
	for _, l := range []string{"tmpfs", "plain", "crypt"} {
		fmt.Printf("BENCH vm_scratch_write_%s_mib_s %.1f MiB/s\n", l, w[l])
		fmt.Printf("BENCH vm_scratch_read_%s_mib_s %.1f MiB/s\n", l, r[l])
	}
	// Each layer's cost: the encrypted, authenticated volume against a
	// plain one (everything), crypt-only against plain (confidentiality),
	// and the AEAD volume against crypt-only (integrity).
	for _, p := range [][2]string{{"aead", "tmpfs"}, {"aead", "plain"}, {"crypt", "plain"}, {"aead", "crypt"}} {
		fmt.Printf("BENCH vm_scratch_write_%s_over_%s %.2f ratio\n", p[0], p[1], w[p[0]]/w[p[1]])
		fmt.Printf("BENCH vm_scratch_read_%s_over_%s %.2f ratio\n", p[0], p[1], r[p[0]]/r[p[1]])
	}
}
