package vm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/images/qemu"
	"github.com/cvmd/cvmd/proto/cvms"
)

// The scratch disk end to end (supervisor/pid1/scratch.go): a computation
// whose dataset is larger than the guest's memory, a block changed by the
// host detected as an I/O error, no plaintext on the host's disk, and a
// fresh volume at the next boot.

// checksumSource is the scratch tests' `bin` algorithm: it reads every
// dataset (whose sizes are multiples of 8) in 1 MiB reads and writes
// "bytes N sum S", S being the sum over files of word·(index+1), words
// being the little-endian 64-bit words of the file, modulo 2^64. A read
// error ends it with the error on stderr and exit status 3. With the
// argument "fill" it first writes /cocos/results/fill.bin until a write
// fails, prints "results full after N bytes: ERROR" and removes the file.
const checksumSource = `#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static uint64_t buf[1 << 17];
static void fill(void) {
	FILE *f = fopen("/cocos/results/fill.bin", "wb");
	if (!f) { perror("fill"); return; }
	setvbuf(f, NULL, _IONBF, 0);
	unsigned long long n = 0;
	memset(buf, 0x5a, sizeof buf);
	for (;;) {
		size_t k = fwrite(buf, 1, sizeof buf, f);
		n += k;
		if (k < sizeof buf) break;
	}
	printf("results full after %llu bytes: %s\n", n, strerror(errno));
	fflush(stdout);
	fclose(f);
	unlink("/cocos/results/fill.bin");
}
int main(int argc, char **argv) {
	uint64_t total = 0, sum = 0;
	if (argc > 1 && strcmp(argv[1], "fill") == 0) fill();
	DIR *d = opendir("/cocos/datasets");
	struct dirent *e;
	char path[4096];
	if (!d) { perror("datasets"); return 2; }
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		snprintf(path, sizeof path, "/cocos/datasets/%s", e->d_name);
		FILE *f = fopen(path, "rb");
		if (!f) { perror(path); return 2; }
		uint64_t words = 0;
		for (;;) {
			size_t n = fread(buf, 8, sizeof buf / 8, f);
			for (size_t i = 0; i < n; i++) sum += buf[i] * (words + i + 1);
			words += n;
			if (n < sizeof buf / 8) break;
		}
		if (ferror(f)) { fprintf(stderr, "reading %s at %llu: %s\n", path, (unsigned long long)words * 8, strerror(errno)); return 3; }
		fclose(f);
		total += words * 8;
	}
	FILE *o = fopen("/cocos/results/result.txt", "w");
	if (!o) { perror("results"); return 4; }
	fprintf(o, "bytes %llu sum %016llx\n", (unsigned long long)total, (unsigned long long)sum);
	printf("checksum done: %llu bytes\n", (unsigned long long)total);
	return fclose(o) == 0 ? 0 : 5;
}
`

// dataset writes a file of size bytes (a multiple of 8): random bytes with
// marker at the start of every 4 KiB block (so that any plaintext of it on
// the host's disk is found), and returns its checksum as checksumSource
// computes it.
func dataset(t testing.TB, path string, size int64, marker string) (sum uint64) {
	t.Helper()
	if size%8 != 0 {
		t.Fatalf("dataset size %d is not a multiple of 8", size)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var seed [32]byte
	rand.Read(seed[:])
	rng := mrand.NewChaCha8(seed)
	w := bufio.NewWriterSize(f, 4<<20)
	block := make([]byte, 4096)
	for off := int64(0); off < size; off += int64(len(block)) {
		rng.Read(block)
		copy(block, marker)
		b := block[:min(int64(len(block)), size-off)]
		for i := 0; i < len(b); i += 8 {
			sum += binary.LittleEndian.Uint64(b[i:]) * uint64((off+int64(i))/8+1)
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// findInFile reports whether needle occurs in the file, reading it in
// chunks that overlap by len(needle)-1 bytes.
func findInFile(t testing.TB, path string, needle []byte) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 16<<20)
	keep := 0
	for {
		n, err := io.ReadFull(f, buf[keep:])
		if bytes.Contains(buf[:keep+n], needle) {
			return true
		}
		if err != nil {
			return false
		}
		keep = len(needle) - 1
		copy(buf, buf[len(buf)-keep:])
	}
}

// dataExtents lists the regions of a sparse file that hold data.
func dataExtents(t testing.TB, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var out [][2]int64
	for off := int64(0); ; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil { // ENXIO: no data after off
			return out
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, [2]int64{start, end})
		off = end
	}
}

// newData returns the parts of after not in before, largest first.
func newData(before, after [][2]int64) [][2]int64 {
	var out [][2]int64
	for _, a := range after {
		parts := [][2]int64{a}
		for _, b := range before {
			var next [][2]int64
			for _, p := range parts {
				if b[1] <= p[0] || b[0] >= p[1] {
					next = append(next, p)
					continue
				}
				if p[0] < b[0] {
					next = append(next, [2]int64{p[0], b[0]})
				}
				if b[1] < p[1] {
					next = append(next, [2]int64{b[1], p[1]})
				}
			}
			parts = next
		}
		out = append(out, parts...)
	}
	slices.SortFunc(out, func(x, y [2]int64) int { return int((y[1] - y[0]) - (x[1] - x[0])) })
	return out
}

// flipBytes inverts one byte every stride bytes of [start, end) of path,
// as a host changing the guest's disk would, and returns how many.
func flipBytes(t testing.TB, path string, start, end, stride int64) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	b := make([]byte, 1)
	for off := start; off < end; off += stride {
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return n
}

// scratchRun is one run of the scratch scenario.
type scratchRun struct {
	*e2e
	disk   string // the backing file
	marker string // in every 4 KiB block of every dataset
	img    image
	envDir string
	vmDir  string
	mgrAdr string
}

// guestMem asks the guest (debug port) for MemTotal-MemAvailable in MiB.
func (r *scratchRun) guestMem(step string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ans, err := r.g.vm.Debug(ctx, "mem")
	if err != nil || !strings.HasPrefix(ans, "used_mib=") {
		r.g.fatalf(step, "debug mem: %q, %v", ans, err)
	}
	n, _ := strconv.Atoi(strings.Fields(strings.TrimPrefix(ans, "used_mib="))[0])
	return n
}

func (r *scratchRun) debug(step, cmd, want string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if ans, err := r.g.vm.Debug(ctx, cmd); err != nil || ans != want {
		r.g.fatalf(step, "debug %s: %q, %v; want %q", cmd, ans, err, want)
	}
}

// newScratchRun builds the test image, the keys and the algorithm, and
// starts the manager with first.
func newScratchRun(t *testing.T, first func(r *scratchRun) *cvms.ComputationRunReq) *scratchRun {
	requireQEMU(t)
	r := &scratchRun{e2e: &e2e{t: t, dir: t.TempDir()}}
	e := r.e2e
	cvmd := cvmdBinary(t)
	e.cvm = cvmBinary(t)
	extra := filepath.Join(e.dir, "extra")
	os.MkdirAll(filepath.Join(extra, "etc/cvmd"), 0o755)
	os.WriteFile(filepath.Join(extra, "etc/cvmd/debug-port"), nil, 0o644)
	r.img = buildImage(t, "vmtest-cvmd", cvmd, extra)
	e.mustLocal("keys", e.cvm, "keys", "-k", "ecdsa", "--dir", e.dir)
	e.key, e.pub = filepath.Join(e.dir, "private.pem"), filepath.Join(e.dir, "public.pem")
	src := filepath.Join(e.dir, "checksum.c")
	os.WriteFile(src, []byte(checksumSource), 0o644)
	e.algo = filepath.Join(e.dir, "checksum")
	e.mustLocal("compile algorithm", "gcc", "-O2", "-o", e.algo, src)
	tag := make([]byte, 8)
	rand.Read(tag)
	r.marker = "cvmd-plaintext-" + hex.EncodeToString(tag)
	r.mgrAdr = e.startManager(first(r))
	r.envDir, r.vmDir = e.guestDirs("vm-scratch")
	e.akHash = provisionAK(t, filepath.Join(r.vmDir, "tpm"))
	e.table = childTableHash(t, cvmd)
	return r
}

// bootVM boots the test image (with the scratch disk unless r.disk is "")
// and waits for every child and the storage line.
func (r *scratchRun) bootVM(step string, memMiB int) int {
	cfg := qemu.Config{
		Kernel: r.img.Kernel, Initrd: r.img.Initrd, TPM: true, EnvDir: r.envDir, Dir: r.vmDir,
		ManagerAddr: r.mgrAdr, DebugPort: true, MemoryMiB: memMiB,
	}
	storage := `msg="pid1: storage: memory \(tmpfs\)"`
	if r.disk != "" {
		cfg.Disks = []qemu.Disk{{Path: r.disk, Serial: qemu.ScratchSerial}}
		storage = `msg="pid1: storage: scratch disk" .*disk=vda serial=cvmd-scratch layout=aead cipher=capi:gcm\(aes\)-random integrity=aead`
	}
	r.g = boot(r.t, cfg)
	ready, _ := r.g.waitChildrenReady(step+": every child ready", 0, children, 5*time.Minute)
	r.g.wait(step+": storage", 0, storage, time.Second)
	return ready
}

// TestScratchDisk is the scratch disk end to end, in one VM of 1 GiB with
// a 6 GiB disk, booted twice:
//   - the storage is measured and announced as the encrypted disk, and
//     attestation can require it;
//   - a computation whose dataset the host then changes (bytes flipped in
//     the backing file while the guest runs) fails: the read is an I/O
//     error, and the supervisor reports the failed tag;
//   - a computation with a 2 GiB dataset (twice the guest's memory; make
//     bench-vm runs 3 GiB in 1.5 GiB, see docs/storage.md for the times),
//     uploaded through the ingress, gives the right result, with the guest's
//     memory flat during the upload;
//   - neither dataset's plaintext is in the backing file;
//   - after a reboot the volume is new: nothing of the first boot is read.
func TestScratchDisk(t *testing.T) {
	if os.Getenv("CVMD_BENCH_VM") == "1" {
		t.Skip("make bench-vm runs the big upload inside TestBenchScratchUpload")
	}
	runScratch(t, 2<<30, 1024, true)
}

// TestBenchScratchUpload prints the big upload's figures (make bench-vm):
// 3 GiB into a 1.5 GiB guest with the disk, and, as the reference, the
// upload rate through the same path into a guest without one (128 MiB).
func TestBenchScratchUpload(t *testing.T) {
	if os.Getenv("CVMD_BENCH_VM") != "1" {
		t.Skip("VM benchmarks run with make bench-vm (CVMD_BENCH_VM=1)")
	}
	// 128 MiB: a dataset in the tmpfs is charged to the agent's memory
	// cgroup (256 MiB), which kills the agent past ~220 MiB.
	ref := memoryUploadRate(t, 128<<20)
	rate := runScratch(t, 3<<30, 1536, false)
	fmt.Printf("BENCH vm_upload_memory_mib_s %.1f MiB/s\n", ref)
	fmt.Printf("BENCH vm_upload_disk_over_memory %.2f ratio\n", rate/ref)
}

// memoryUploadRate uploads a dataset of size bytes into a guest without a
// scratch disk (2 GiB: it lands in the tmpfs) and returns the rate, MiB/s.
func memoryUploadRate(t *testing.T, size int64) float64 {
	var path string
	r := newScratchRun(t, func(r *scratchRun) *cvms.ComputationRunReq {
		path = filepath.Join(r.dir, "ref.bin")
		dataset(t, path, size, r.marker)
		r.datasets = []string{path}
		return r.computation("ref")
	})
	r.bootVM("reference boot", 2048)
	r.waitManager("reference accepted", 3*time.Minute, runResOf("ref"))
	r.mustCVM("reference: upload algorithm", 2*time.Minute, "algo", r.algo, r.key, "-a", "bin")
	took, _ := r.uploadSampled("reference: upload dataset", path)
	r.g.powerOff(2 * time.Minute)
	rate := float64(size>>20) / took.Seconds()
	t.Logf("reference: %d MiB into memory in %v (%.1f MiB/s)", size>>20, took.Round(time.Millisecond), rate)
	return rate
}

// runScratch runs the scenario with a dataset of big bytes in a guest of
// memMiB, the reboot part only with reboot, and returns the big upload's
// rate in MiB/s.
func runScratch(t *testing.T, big int64, memMiB int, reboot bool) float64 {
	var tamperA, tamperB string
	r := newScratchRun(t, func(r *scratchRun) *cvms.ComputationRunReq {
		tamperA, tamperB = filepath.Join(r.dir, "tamper-a.bin"), filepath.Join(r.dir, "tamper-b.bin")
		dataset(t, tamperA, 32<<20, r.marker)
		dataset(t, tamperB, 4096, r.marker)
		r.datasets = []string{tamperA, tamperB}
		return r.computation("t1")
	})
	e := r.e2e
	bigFile := filepath.Join(e.dir, "big.bin")
	start := time.Now()
	bigSum := dataset(t, bigFile, big, r.marker)
	t.Logf("%d MiB dataset made in %v", big>>20, time.Since(start).Round(time.Millisecond))
	if !findInFile(t, bigFile, []byte(r.marker)) {
		t.Fatal("the marker scan does not find the marker in the dataset itself")
	}
	r.disk = sparseDisk(t, e.dir, "scratch.img", 6<<30)
	phase := time.Now()
	r.bootVM("boot", memMiB)
	g := e.g
	e.waitManager("storage announced", 2*time.Minute, supervisorEvent("storage.ready", `"kind":"disk"`, `"integrity":"aead"`))
	e.waitManager("computation t1 accepted", 3*time.Minute, runResOf("t1"))
	t.Logf("booted with the scratch disk in %v", time.Since(phase).Round(time.Millisecond))
	phase = time.Now()
	r.attestStorage("attestation requires the disk")

	// Tampering: the host flips bytes of dataset A on the disk, between its
	// upload and the run, which the last dataset starts. The run first
	// fills its results directory: the cap (on the disk, sized by it) holds.
	ready := e.waitManager("storage announced", time.Second, supervisorEvent("storage.ready", `"kind":"disk"`)).GetAgentEvent()
	var budget struct {
		ResultsCap int64 `json:"results_cap_bytes"`
	}
	if err := json.Unmarshal(ready.GetDetails(), &budget); err != nil || budget.ResultsCap < 64<<20 {
		g.fatalf("storage announced", "details %s: results cap %d, %v", ready.GetDetails(), budget.ResultsCap, err)
	}
	e.mustCVM("t1: upload algorithm", 2*time.Minute, "algo", e.algo, e.key, "-a", "bin", "--args", "fill")
	r.debug("t1: write back", "drop-caches", "dropped")
	before := dataExtents(t, r.disk)
	e.mustCVM("t1: upload dataset A", 5*time.Minute, "data", tamperA, e.key)
	r.debug("t1: write back, drop the page cache", "drop-caches", "dropped")
	fresh := newData(before, dataExtents(t, r.disk))
	if len(fresh) == 0 || fresh[0][1]-fresh[0][0] < 16<<20 {
		g.fatalf("t1: find dataset A on the disk", "new data extents %v: none of 16 MiB or more", fresh)
	}
	a := fresh[0]
	n := flipBytes(t, r.disk, a[0]+(a[1]-a[0])/8, a[1]-(a[1]-a[0])/8, 256<<10)
	t.Logf("flipped %d bytes in [%d, %d) of the backing file (new data there: %v)", n, a[0], a[1], fresh)
	e.mustCVM("t1: upload dataset B", 2*time.Minute, "data", tamperB, e.key)
	e.waitManager("t1: the supervisor reports the failed tag", 5*time.Minute, supervisorEvent("storage.integrity_error", "failed its authentication tag"))
	e.waitManager("t1: the computation fails", 5*time.Minute, func(m *cvms.ClientStreamMessage) bool {
		ev := m.GetAgentEvent()
		return ev != nil && ev.GetComputationId() == "t1" && ev.GetStatus() == "Failed"
	})
	full := e.waitManager("t1: the results cap holds", 2*time.Minute, func(m *cvms.ClientStreamMessage) bool {
		return strings.Contains(m.GetAgentLog().GetMessage(), "results full after ")
	}).GetAgentLog().GetMessage()
	m := regexp.MustCompile(`results full after (\d+) bytes: Disk quota exceeded`).FindStringSubmatch(full)
	if m == nil {
		g.fatalf("t1: the results cap holds", "the algorithm said %q, want a write refused with EDQUOT", full)
	}
	if n, _ := strconv.ParseInt(m[1], 10, 64); n > budget.ResultsCap || n < budget.ResultsCap-4<<20 {
		g.fatalf("t1: the results cap holds", "results full after %d bytes, the cap is %d", n, budget.ResultsCap)
	}
	e.waitManager("t1: the algorithm's read was an I/O error", 2*time.Minute, func(m *cvms.ClientStreamMessage) bool {
		l := m.GetAgentLog()
		return l != nil && strings.Contains(l.GetMessage(), "reading /cocos/datasets/tamper-a.bin at") && strings.Contains(l.GetMessage(), "Input/output error")
	})
	if out, err := e.cvmRun("t1: result", time.Minute, "result", e.key, "-o", filepath.Join(e.dir, "results-t1")); err == nil {
		g.fatalf("t1: no result", "cvm result succeeded after the tampering:\n%s", out)
	}
	t.Logf("tampering detected in %v", time.Since(phase).Round(time.Millisecond))

	// The big computation: its dataset is twice the guest's memory.
	if err := e.mgr.Command("stop t1"); err != nil {
		g.fatalf("stop t1", "%v", err)
	}
	e.waitManager("stop t1", 2*time.Minute, func(m *cvms.ClientStreamMessage) bool {
		return m.GetStopComputationRes().GetComputationId() == "t1"
	})
	e.datasets = []string{bigFile}
	if err := e.mgr.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReq{RunReq: e.computation("big")}}); err != nil {
		g.fatalf("send computation big", "%v", err)
	}
	e.waitManager("computation big accepted", 3*time.Minute, runResOf("big"))
	e.mustCVM("big: upload algorithm", 2*time.Minute, "algo", e.algo, e.key, "-a", "bin")
	upload, mem := r.uploadSampled("big: upload dataset", bigFile)
	baseline, peak := mem[0], slices.Max(mem)
	t.Logf("big: %d MiB uploaded in %v (%.1f MiB/s); guest memory used %d MiB before, %d MiB at most (samples %v)",
		big>>20, upload.Round(time.Millisecond), float64(big>>20)/upload.Seconds(), baseline, peak, mem)
	if peak-baseline > 256 {
		g.fatalf("big: memory flat", "the guest's memory grew by %d MiB during the upload (samples %v)", peak-baseline, mem)
	}
	phase = time.Now()
	got := r.result("big", 20*time.Minute)
	t.Logf("big: run and result in %v", time.Since(phase).Round(time.Millisecond))
	if want := fmt.Sprintf("bytes %d sum %016x\n", big, bigSum); got != want {
		g.fatalf("big: check result", "result.txt = %q, want %q", got, want)
	}
	if os.Getenv("CVMD_BENCH_VM") == "1" {
		fmt.Printf("BENCH vm_upload_big_s %.1f s\n", upload.Seconds())
		fmt.Printf("BENCH vm_upload_big_mib_s %.1f MiB/s\n", float64(big>>20)/upload.Seconds())
		// vm_mem_used_mib itself is TestBenchVM's (every child ready).
		fmt.Printf("BENCH vm_mem_used_upload_start_mib %d MiB\n", baseline)
		fmt.Printf("BENCH vm_mem_used_upload_peak_mib %d MiB\n", peak)
	}

	r.debug("write back", "drop-caches", "dropped")
	phase = time.Now()
	if findInFile(t, r.disk, []byte(r.marker)) {
		g.fatalf("no plaintext on the host", "the datasets' marker %q is in the backing file", r.marker)
	}
	t.Logf("backing file scanned in %v", time.Since(phase).Round(time.Millisecond))
	rate := float64(big>>20) / upload.Seconds()
	if !reboot {
		g.powerOff(2 * time.Minute)
		return rate
	}
	g.powerOff(2 * time.Minute)
	seen := len(e.mgr.Messages())

	// Reboot on the same disk: a new key, a new volume; the first boot's
	// computation (its state file and datasets) is gone with its key.
	phase = time.Now()
	r.bootVM("reboot", memMiB)
	e.g.wait("reboot: volume made anew", 0, `msg="pid1: scratch: dm-integrity ready" .*disk=vda`, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	announced := supervisorEvent("storage.ready", `"kind":"disk"`)
	if err := e.mgr.Wait(ctx, func(rs []devmanager.Received) bool {
		return slices.ContainsFunc(rs[min(seen, len(rs)):], func(r devmanager.Received) bool { return announced(r.Msg) })
	}); err != nil {
		e.g.fatalf("reboot: storage announced", "%v\nmanager received:\n%s", err, e.managerTail(40))
	}
	if s := e.g.vm.Grep(regexp.MustCompile(`resuming computation`)); s != "" {
		e.g.fatalf("reboot: nothing resumed", "the agent resumed a computation of the previous boot:\n%s", s)
	}
	if s := e.g.vm.Grep(regexp.MustCompile(`INTEGRITY AEAD ERROR`)); s != "" {
		e.g.fatalf("reboot: nothing old read", "the new volume read a block of the old one:\n%s", s)
	}
	e.g.powerOff(2 * time.Minute)
	t.Logf("reboot, checks and power-off in %v", time.Since(phase).Round(time.Millisecond))
	return rate
}

// attestStorage gets vTPM evidence and verifies it requiring the storage to
// be the encrypted disk; requiring memory must then fail.
func (r *scratchRun) attestStorage(step string) {
	e := r.e2e
	nonce := make([]byte, 32)
	rand.Read(nonce)
	file := filepath.Join(e.dir, "attestation.bin")
	e.mustCVM(step+": get", 2*time.Minute, "attestation", "get", "vtpm", "--vtpm", hex.EncodeToString(nonce), "-o", file)
	args := func(storage string) []string {
		return []string{"attestation", "verify", file, "--json", "--vtpm", hex.EncodeToString(nonce), "--ak", e.akHash,
			"--child-table", e.table, "--storage", storage}
	}
	out := e.mustCVM(step+": verify", time.Minute, args("disk")...)
	if !strings.Contains(out, `"cvmd.storage"`) || !strings.Contains(out, `"cipher":"capi:gcm(aes)-random"`) {
		e.g.fatalf(step, "verdict does not show the storage check and the cipher:\n%s", out)
	}
	if out, err := e.cvmRun(step, time.Minute, args("memory")...); err == nil || !strings.Contains(out, "cvmd.storage") {
		e.g.fatalf(step+": memory refused", "verify requiring memory: %v\n%s", err, out)
	}
}

// uploadSampled uploads a dataset and samples the guest's memory every 2 s
// meanwhile (the first sample is before the upload).
func (r *scratchRun) uploadSampled(step, path string) (time.Duration, []int) {
	mem := []int{r.guestMem(step)}
	var mu sync.Mutex
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				ans, err := r.g.vm.Debug(ctx, "mem")
				cancel()
				if err != nil {
					continue
				}
				if n, err := strconv.Atoi(strings.Fields(strings.TrimPrefix(ans, "used_mib="))[0]); err == nil {
					mu.Lock()
					mem = append(mem, n)
					mu.Unlock()
				}
			}
		}
	}()
	start := time.Now()
	r.mustCVM(step, 30*time.Minute, "data", path, r.key)
	took := time.Since(start)
	close(done)
	<-sampled
	return took, mem
}

// result waits for the computation's result and returns result.txt.
func (r *scratchRun) result(id string, within time.Duration) string {
	out := filepath.Join(r.dir, "results-"+id)
	deadline := time.Now().Add(within)
	for {
		o, err := r.cvmRun(id+": result", 2*time.Minute, "result", r.key, "-o", out)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			r.g.fatalf(id+": result", "no result after %v; last cvm answer:\n%s\nmanager saw:\n%s", within, o, r.managerTail(40))
		}
		time.Sleep(5 * time.Second)
	}
	return readZipFile(r.t, filepath.Join(out, "results.zip"), "result.txt")
}

// TestChecksumAlgorithm runs the scratch tests' algorithm on this host (its
// paths moved into a temporary directory) against dataset's own checksum,
// so that a wrong result in the VM means the VM, not the test.
func TestChecksumAlgorithm(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "datasets"), 0o755)
	os.MkdirAll(filepath.Join(dir, "results"), 0o755)
	src := filepath.Join(dir, "checksum.c")
	os.WriteFile(src, []byte(strings.ReplaceAll(checksumSource, "/cocos/", dir+"/")), 0o644)
	bin := filepath.Join(dir, "checksum")
	if out, err := exec.Command("gcc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	var sum uint64
	var total int64
	for name, size := range map[string]int64{"a.bin": 3<<20 + 8, "b.bin": 4096, "c.bin": 8} {
		sum += dataset(t, filepath.Join(dir, "datasets", name), size, "cvmd-plaintext-test")
		total += size
	}
	if out, err := exec.Command(bin).CombinedOutput(); err != nil {
		t.Fatalf("checksum: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "results", "result.txt"))
	if want := fmt.Sprintf("bytes %d sum %016x\n", total, sum); string(got) != want {
		t.Fatalf("result.txt = %q, want %q", got, want)
	}
}
