package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha3"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/children/agent/agenttest"
	attchild "github.com/cvmd/cvmd/children/attestation"
	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
)

// benchBytes is the size of each measured transfer: 1 GiB, or
// CVMD_BENCH_UPLOAD_MIB MiB when iterating.
func benchBytes() int64 {
	var mib int64
	if _, err := fmt.Sscan(os.Getenv("CVMD_BENCH_UPLOAD_MIB"), &mib); err == nil && mib > 0 {
		return mib << 20
	}
	return 1 << 30
}

// benchRounds is how many times each transfer is measured, each interleaved
// with its reference (CVMD_BENCH_ROUNDS, default 2).
func benchRounds() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("CVMD_BENCH_ROUNDS"), &n); err == nil && n > 0 {
		return n
	}
	return 2
}

// childProc is a cvmd child (the test binary as a helper) in its own process.
type childProc struct {
	cmd    *exec.Cmd
	ctl    *ipc.Control
	stderr *bytes.Buffer
}

// startChild runs the test binary as child name with the given settings and
// fds (by their names in the child config) and waits for READY; the child
// is stopped at cleanup.
func startChild(t *testing.T, name string, settings *config.IngressSettings, fds map[string]*os.File) *childProc {
	t.Helper()
	mine, theirs, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	anySettings, err := anypb.New(settings)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &control.ChildConfig{Version: child.ConfigVersion, Name: name, ComputationId: "bench", LogLevel: "info",
		Fds: map[string]int32{}, Settings: anySettings, Generation: 1}
	cmd := testutil.HelperCommand(name)
	c := &childProc{cmd: cmd, ctl: ipc.NewControl(mine), stderr: &bytes.Buffer{}}
	cmd.Stderr = c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.ExtraFiles = []*os.File{theirs}
	for n, f := range fds {
		cfg.Fds[n] = int32(3 + len(cmd.ExtraFiles))
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		c.ctl.Close()
	})
	if err := c.ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: cfg}}}, nil); err != nil {
		t.Fatal(err)
	}
	if msg, _, err := c.ctl.Recv(); err != nil || msg.GetReady() == nil {
		t.Fatalf("%s child did not say READY: %v %v\n%s", name, msg, err, c.stderr)
	}
	return c
}

// serveAttestation serves the real attestation service (simulated SNP+vTPM:
// TPM simulator and go-sev-guest's test signer) on a new edge and returns
// the client end, for an aTLS ingress.
func serveAttestation(t *testing.T) *os.File {
	svc, err := attchild.New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateSnp: true}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "attestation")
	if err != nil {
		t.Fatal(err)
	}
	l := ipc.NewListener("attestation")
	l.Add(srv)
	gs := grpc.NewServer()
	attestation.RegisterAttestationServer(gs, svc)
	done := make(chan struct{})
	go func() { gs.Serve(l); close(done) }()
	t.Cleanup(func() { gs.Stop(); l.Close(); <-done; cli.Close(); svc.Close() })
	return cli
}

// ingressProc is an ingress child in front of the agent process p, on its
// own loopback listener.
type ingressProc struct {
	*childProc
	mode, addr string
}

func startIngressProc(t *testing.T, p *proc, mode string, settings *config.IngressSettings, attestationEdge *os.File) *ingressProc {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // the child has its own copy
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	fds := map[string]*os.File{"listen": lf, "to:agent": p.ingressEdge}
	if attestationEdge != nil {
		fds["to:attestation"] = attestationEdge
	}
	return &ingressProc{childProc: startChild(t, "ingress", settings, fds), mode: mode, addr: ln.Addr().String()}
}

// cpuOf is the user+system CPU time of process pid so far.
func cpuOf(t *testing.T, pid int) float64 {
	return (&proc{cmd: &exec.Cmd{Process: &os.Process{Pid: pid}}}).cpuSeconds(t)
}

// sha3Of is the SHA3-256 of total bytes of data repeated.
func sha3Of(data []byte, total int64) [32]byte {
	h := sha3.New256()
	for n := int64(0); n < total; n += int64(len(data)) {
		h.Write(data[:min(int64(len(data)), total-n)])
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// refProc is a reference running in a process of its own, the test binary
// as a helper: it hashes (sha3loop) or reads a file (readloop) over and over
// and counts the bytes done in a shared counter file. It runs only while
// continued (SIGCONT), in turn with the transfer it is the reference of.
type refProc struct {
	pid     int
	counter []byte // mmap of the counter file: little-endian bytes done
}

// startRef starts helper (sha3loop or readloop) on path, stopped.
func startRef(t *testing.T, helper, path string) *refProc {
	cf := filepath.Join(t.TempDir(), "counter")
	if err := os.WriteFile(cf, make([]byte, 8), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(cf, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	counter, err := unix.Mmap(int(f.Fd()), 0, 8, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	cmd := testutil.HelperCommand(helper, cf, path)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &refProc{pid: cmd.Process.Pid, counter: counter}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		unix.Munmap(counter)
	})
	r.stop(t)
	return r
}

func (r *refProc) done() int64 {
	return int64(binary.LittleEndian.Uint64(r.counter))
}

// stop stops the reference and waits until it has.
func (r *refProc) stop(t *testing.T) {
	syscall.Kill(r.pid, syscall.SIGSTOP)
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(r.pid, &ws, syscall.WUNTRACED, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || !ws.Stopped() {
			t.Fatalf("reference process %d did not stop: %v %v", r.pid, err, ws)
		}
		return
	}
}

// window runs the reference alone for d and returns the bytes it did, the
// time it ran and the CPU seconds it used.
func (r *refProc) window(t *testing.T, d time.Duration) (int64, time.Duration, float64) {
	n0, c0 := r.done(), cpuOf(t, r.pid)
	start := time.Now()
	syscall.Kill(r.pid, syscall.SIGCONT)
	time.Sleep(d)
	r.stop(t)
	return r.done() - n0, time.Since(start), cpuOf(t, r.pid) - c0
}

// refHelpers are the reference processes' bodies: args are the counter
// file and the file to hash or read.
var refHelpers = map[string]func() int{
	// One core's SHA3-256 of the dataset's bytes (its first 256 KiB over
	// and over: the dataset is one MiB repeated, and a received chunk is
	// hashed while in cache too).
	"sha3loop": func() int {
		h := sha3.New256()
		return refLoop(256<<10, func(f *os.File, buf []byte) {
			h.Write(buf)
		}, true)
	},
	// The file read sequentially in 1 MiB reads (what the agent's download
	// does), from its start again at its end; what was read is evicted
	// from the page cache 16 MiB behind the reading, so every read comes
	// from the disk (the kernel's read-ahead still works ahead of it, as
	// for the agent). Behind, not at once: the page cache holds a file in
	// folios of up to several MiB, and a range evicts only the folios it
	// covers whole.
	"readloop": func() int {
		var off, evicted int64
		return refLoop(1<<20, func(f *os.File, buf []byte) {
			n, err := io.ReadFull(f, buf)
			off += int64(n)
			if off-evicted >= 64<<20 {
				evicted = off - 16<<20
				unix.Fadvise(int(f.Fd()), 0, evicted, unix.FADV_DONTNEED)
			}
			if err != nil {
				unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				f.Seek(0, io.SeekStart)
				off, evicted = 0, 0
			}
		}, false)
	},
}

// refLoop counts the bytes step does, a buffer of size at a time, in the
// counter file, until it is killed. preload fills the buffer from the file
// first.
func refLoop(size int, step func(f *os.File, buf []byte), preload bool) int {
	cf, path := os.Args[len(os.Args)-2], os.Args[len(os.Args)-1]
	c, err := os.OpenFile(cf, os.O_RDWR, 0)
	if err != nil {
		return 1
	}
	counter, err := unix.Mmap(int(c.Fd()), 0, 8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return 1
	}
	f, err := os.Open(path)
	if err != nil {
		return 1
	}
	buf := make([]byte, size)
	if preload {
		f.ReadAt(buf, 0)
	}
	runtime.LockOSThread()
	var n uint64
	for {
		step(f, buf)
		n += uint64(len(buf))
		binary.LittleEndian.PutUint64(counter, n)
	}
}

// Interleaving: while a transfer runs, every sliceEvery its processes are
// stopped (SIGSTOP), its reference process runs alone for refWindow, and
// it is stopped and they are continued. Reference and transfer so
// alternate five times a second, both long-running processes stopped and
// continued the same way, and see the same load however it changes (how
// an overloaded machine's scheduler shares it between one thread that
// never sleeps and the transfer's waking threads still differs: see
// docs/benchmarks.md).
const (
	sliceEvery = 100 * time.Millisecond
	refWindow  = 100 * time.Millisecond
)

// interleaved is one transfer measured against its reference.
type interleaved struct {
	running  time.Duration // the transfer's wall-clock time, pauses excluded
	refBytes int64
	refTime  time.Duration
	refCPU   float64 // the reference's CPU seconds
	cpu      float64 // the cvm process's CPU seconds
}

func (m interleaved) rate(bytes int64) float64 {
	return float64(bytes) / (1 << 20) / m.running.Seconds()
}
func (m interleaved) refRate() float64 { return float64(m.refBytes) / (1 << 20) / m.refTime.Seconds() }

// refCPUPerGiB is the reference's CPU seconds per GiB: what one GiB of
// SHA3 (or of reading) costs, however loaded the machine.
func (m interleaved) refCPUPerGiB() float64 { return m.refCPU / (float64(m.refBytes) / (1 << 30)) }

// runInterleaved runs bin/cvm with env and args; others are the pids of
// the other processes the transfer crosses (ingress, agent), paused with
// it while ref runs.
func runInterleaved(t *testing.T, bin string, env []string, others []int, ref *refProc, args ...string) interleaved {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pids := append([]int{cmd.Process.Pid}, others...)
	signal := func(sig syscall.Signal) {
		for _, pid := range pids {
			syscall.Kill(pid, sig)
		}
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var m interleaved
	var paused time.Duration
	slice := time.NewTimer(sliceEvery)
	defer slice.Stop()
	var err error
wait:
	for {
		select {
		case err = <-exited:
			break wait
		case <-slice.C:
			p0 := time.Now()
			signal(syscall.SIGSTOP)
			n, d, c := ref.window(t, refWindow)
			signal(syscall.SIGCONT)
			paused += time.Since(p0)
			m.refBytes += n
			m.refTime += d
			m.refCPU += c
			slice.Reset(sliceEvery)
		}
	}
	m.running = time.Since(start) - paused
	if err != nil {
		t.Fatalf("cvm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	for m.refTime < 4*refWindow { // too quick to be sliced much: windows after it
		n, d, c := ref.window(t, refWindow)
		m.refBytes += n
		m.refTime += d
		m.refCPU += c
	}
	m.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return m
}

// runCVM runs bin/cvm with env and args to completion.
func runCVM(t *testing.T, bin string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cvmBinary is $CVMD_BIN/cvm (make bench builds it), else a fresh build.
func cvmBinary(t *testing.T) string {
	if d := os.Getenv("CVMD_BIN"); d != "" {
		if p := filepath.Join(d, "cvm"); fileExists(p) {
			return p
		}
	}
	out := filepath.Join(t.TempDir(), "cvm")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/cvm")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building cvm: %v\n%s", err, b)
	}
	return out
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// clearPeakRSS resets the VmHWM of pid (Linux clear_refs 5).
func clearPeakRSS(t *testing.T, pid int) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestBenchTransfer measures the CLI's transfers the way a user makes them,
// each party in its own process: bin/cvm → the ingress child (aTLS with
// simulated SNP+vTPM evidence, TLS, or plaintext) → the agent child → tmpfs
// (the CVM's root), and back for the results. Each transfer is interleaved
// with its reference (one core's SHA3-256 for uploads, the results file's
// sequential read for downloads; see runInterleaved); a figure is the
// median over the rounds.
func TestBenchTransfer(t *testing.T) {
	testutil.BenchOn(t)
	size, rounds := benchBytes(), benchRounds()
	cvm := cvmBinary(t)
	state, dir := ramDir(t), ramDir(t)
	p := startProc(t, state)

	// The dataset: 1 MiB of random bytes repeated, one file on tmpfs with a
	// hard link per upload (the manifest matches datasets by file name).
	pat := make([]byte, 1<<20)
	rand.Read(pat)
	sum := sha3Of(pat, size)
	src := filepath.Join(dir, "src.bin")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	for n := int64(0); n < size; n += int64(len(pat)) {
		f.Write(pat[:min(int64(len(pat)), size-n)])
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "in")
	os.Mkdir(in, 0o755)
	modes := []string{"atls", "tls", "plain"}
	var specs []agenttest.DatasetSpec
	owner := agenttest.NewParty(t, "ecdsa", dir)
	for r := range rounds {
		for _, m := range modes {
			name := fmt.Sprintf("%s-%d.bin", m, r)
			if err := os.Link(src, filepath.Join(in, name)); err != nil {
				t.Fatal(err)
			}
			specs = append(specs, agenttest.DatasetSpec{Filename: name, Hash: sum, Owner: owner})
		}
	}

	algoP, consumer := agenttest.NewParty(t, "ecdsa", dir), agenttest.NewParty(t, "ecdsa", dir)
	algo := filepath.Join(dir, "algo.sh")
	os.WriteFile(algo, []byte(fmt.Sprintf("#!/bin/sh\nhead -c %d /dev/zero > results/big.bin\n", size)), 0o755)
	m := agenttest.NewManifest("bench", algoP, agenttest.HashFile(t, algo), "bin", specs, consumer)
	if res, err := p.Control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("starting the computation: %v %q", err, res.GetError())
	}

	// The ingress children, one per mode as for three computations.
	caFile, certPEM, keyPEM := tlsIdentity(t, dir)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{}`), 0o600)
	ingresses := map[string]*ingressProc{
		"atls":  startIngressProc(t, p, "atls", &config.IngressSettings{AttestedTls: true, PlatformType: int32(attest.SNPvTPM)}, serveAttestation(t)),
		"tls":   startIngressProc(t, p, "tls", &config.IngressSettings{CertFile: certPEM, KeyFile: keyPEM}, nil),
		"plain": startIngressProc(t, p, "plain", &config.IngressSettings{}, nil),
	}
	envs := map[string][]string{
		"atls": {"AGENT_GRPC_URL=" + ingresses["atls"].addr, "AGENT_GRPC_ATTESTED_TLS=true",
			"AGENT_GRPC_ATTESTATION_POLICY=" + policy, "CVM_ATTESTATION_ALLOW_SIMULATED=true"},
		"tls":   {"AGENT_GRPC_URL=" + ingresses["tls"].addr, "AGENT_GRPC_SERVER_CA_CERTS=" + caFile},
		"plain": {"AGENT_GRPC_URL=" + ingresses["plain"].addr},
	}
	t.Cleanup(func() {
		if t.Failed() {
			for m, ing := range ingresses {
				t.Logf("%s ingress log:\n%s", m, ing.stderr)
			}
		}
	})
	runCVM(t, cvm, envs["atls"], "algo", algo, algoP.KeyFile)

	gib := float64(size) / (1 << 30)
	sha3Ref := startRef(t, "sha3loop", src)
	// run measures one transfer and logs its CPU per GiB in each process;
	// cpuOfRef collects, per transfer kind, its CPU per GiB in all
	// processes ÷ its reference's.
	cpuOfRef := map[string][]float64{}
	run := func(what string, ing *ingressProc, ref *refProc, args ...string) interleaved {
		a0, i0 := p.cpuSeconds(t), cpuOf(t, ing.cmd.Process.Pid)
		stopPerf := perfRecord(t, what, p.cmd.Process.Pid, ing.cmd.Process.Pid)
		togglePprof(p.cmd.Process.Pid, ing.cmd.Process.Pid)
		m := runInterleaved(t, cvm, envs[ing.mode], []int{ing.cmd.Process.Pid, p.cmd.Process.Pid}, ref, args...)
		togglePprof(p.cmd.Process.Pid, ing.cmd.Process.Pid)
		stopPerf()
		a1, i1 := p.cpuSeconds(t), cpuOf(t, ing.cmd.Process.Pid)
		cpu := fmt.Sprintf("cvm %.2f, ingress %.2f, agent %.2f", m.cpu/gib, (i1-i0)/gib, (a1-a0)/gib)
		t.Logf("%s: %.1f MiB/s, reference %.1f MiB/s (%.0f %%); CPU s/GiB: %s", what, m.rate(size), m.refRate(), 100*m.rate(size)/m.refRate(), cpu)
		total := (m.cpu + i1 - i0 + a1 - a0) / gib
		testutil.Bench(what+"_cpu_s_per_gib", total, "s", cpu)
		kind := what[:strings.LastIndexByte(what, '_')]
		cpuOfRef[kind] = append(cpuOfRef[kind], total/m.refCPUPerGiB())
		return m
	}

	var refs, sha3CPU []float64
	rates, ratios := map[string][]float64{}, map[string][]float64{}
	clearPeakRSS(t, p.cmd.Process.Pid)
	for r := range rounds {
		for _, mode := range modes {
			name := fmt.Sprintf("%s-%d.bin", mode, r)
			m := run(fmt.Sprintf("upload_%s_%d", mode, r), ingresses[mode], sha3Ref, "data", filepath.Join(in, name), owner.KeyFile)
			os.Remove(filepath.Join(state, "computation", "datasets", name)) // keep tmpfs small
			refs = append(refs, m.refRate())
			sha3CPU = append(sha3CPU, m.refCPUPerGiB())
			rates[mode] = append(rates[mode], m.rate(size))
			ratios[mode] = append(ratios[mode], 100*m.rate(size)/m.refRate())
		}
	}
	rss := p.peakRSSMiB(t)
	testutil.Bench("sha3_ref_mib_s", median(refs), "MiB/s", fmt.Sprintf("one core's SHA3-256 of the same bytes, interleaved with each upload (median of %d)", len(refs)))
	for _, mode := range modes {
		testutil.Bench(fmt.Sprintf("upload_%s_mib_s", mode), median(rates[mode]), "MiB/s", fmt.Sprintf("median of %d", len(rates[mode])))
		testutil.Bench(fmt.Sprintf("%s_upload_of_sha3_pct", mode), median(ratios[mode]), "pct", "each upload ÷ its interleaved SHA3 rate, median; target ≥ 80")
	}
	testutil.Bench("sha3_ref_cpu_s_per_gib", median(sha3CPU), "s", "the SHA3 reference's own CPU per GiB")
	for _, mode := range modes {
		r := median(cpuOfRef["upload_"+mode])
		testutil.Bench(fmt.Sprintf("%s_upload_cpu_of_sha3", mode), r, "ratio",
			"CPU per GiB of cvm, ingress and agent together ÷ the SHA3 reference's; at ≤ 2 the two cores of an idle machine could keep the hash busy")
		// Not a measurement: what that CPU allows on the two cores of this
		// machine with nothing else running (the hash thread then waits
		// for no one only if everything fits on two cores).
		testutil.Bench(fmt.Sprintf("%s_upload_idle_bound_pct", mode), 100*min(1, float64(runtime.NumCPU())/r), "pct",
			fmt.Sprintf("100 × min(1, %d cores ÷ %s_upload_cpu_of_sha3): the upload's ceiling on this machine idle", runtime.NumCPU(), mode))
	}
	testutil.Bench("agent_peak_rss_mib", rss, "MiB", "VmHWM over the uploads; target ≤ 64")
	if os.Getenv("CVMD_BENCH_UPLOADS_ONLY") == "1" { // when iterating on uploads
		return
	}

	// Results: the algorithm writes 1 GiB, the agent zips it (stored).
	if err := waitFor(p, "ConsumingResults", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	// The results on a disk: the agent's results.zip is moved to the
	// machine's disk (ext4 on virtio, as the CVM's scratch disk is ext4 on
	// a virtio disk) and the agent reaches it through a symlink; the
	// reference reads a copy of it. Both are read cold (their pages evicted
	// before each download and behind each reference read), so each
	// measures the disk and not the page cache.
	zipPath, refPath := onDisk(t, filepath.Join(state, "results.zip"))
	diskRef := startRef(t, "readloop", refPath)
	out := filepath.Join(dir, "out")
	var diskRefs, dl, dlRatios []float64
	clearPeakRSS(t, p.cmd.Process.Pid)
	for r := range rounds {
		evict(t, zipPath)
		m := run(fmt.Sprintf("result_atls_%d", r), ingresses["atls"], diskRef, "result", consumer.KeyFile, "-o", out)
		st, err := os.Stat(filepath.Join(out, "results.zip"))
		if err != nil || st.Size() < size {
			t.Fatalf("results: %v %v", st, err)
		}
		os.Remove(filepath.Join(out, "results.zip"))
		diskRefs = append(diskRefs, m.refRate())
		dl = append(dl, m.rate(st.Size()))
		dlRatios = append(dlRatios, 100*m.rate(st.Size())/m.refRate())
	}
	testutil.Bench("disk_read_ref_mib_s", median(diskRefs), "MiB/s", fmt.Sprintf("a copy of results.zip read cold from the disk in 1 MiB reads, interleaved with each download (median of %d)", len(diskRefs)))
	testutil.Bench("result_download_mib_s", median(dl), "MiB/s", "cvm result through the aTLS ingress, results.zip read cold from the disk, written to tmpfs")
	testutil.Bench("result_of_disk_pct", median(dlRatios), "pct", "each download ÷ its interleaved read rate, median; target ≥ 80")
	testutil.Bench("result_cpu_of_disk_read", median(cpuOfRef["result_atls"]), "ratio", "CPU per GiB of cvm, ingress and agent together ÷ the disk read reference's")
	testutil.Bench("agent_peak_rss_download_mib", p.peakRSSMiB(t), "MiB", "VmHWM over the downloads")
}

// onDisk moves the file at path to a directory on the machine's disk,
// leaves a symlink to it at path, and makes a copy beside it; it returns
// the moved file and the copy, both written back and out of the page cache.
func onDisk(t *testing.T, path string) (moved, cp string) {
	d, err := os.MkdirTemp("/var/tmp", "cvmd-bench-disk-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	moved, cp = filepath.Join(d, filepath.Base(path)), filepath.Join(d, "copy-"+filepath.Base(path))
	for _, dst := range []string{moved, cp} {
		src, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(dst)
		if err == nil {
			_, err = io.Copy(f, src)
		}
		if err == nil {
			err = f.Sync()
		}
		src.Close()
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		evict(t, dst)
	}
	tmp := path + ".link"
	if err := os.Symlink(moved, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return moved, cp
}

// evict drops path's (clean) pages from the page cache.
func evict(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// perfRecord, when CVMD_BENCH_PERF names a directory, records the whole
// machine's stacks (perf record -a -g) into <dir>/<name>.perf until the
// returned function is called, for `perf report --sort pid,sym`; the pids
// of the agent and the ingress are logged (the cvm is the process named
// cvm).
func perfRecord(t *testing.T, name string, agentPid, ingressPid int) func() {
	d := os.Getenv("CVMD_BENCH_PERF")
	if d == "" {
		return func() {}
	}
	out := filepath.Join(d, name+".perf")
	cmd := exec.Command("perf", "record", "-a", "-g", "-F", "499", "-o", out)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("perf %s: agent pid %d, ingress pid %d", out, agentPid, ingressPid)
	time.Sleep(200 * time.Millisecond) // perf's start-up, outside the measurement
	return func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}
}

// waitFor polls the agent's state until it is want.
func waitFor(p *proc, want string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		st, err := p.Control.State(context.Background(), &agentctl.StateRequest{})
		if err == nil && st.GetState() == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent state %v (%v), want %s", st.GetState(), err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
