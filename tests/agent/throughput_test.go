package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha3"
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

// benchRounds is how many times each transfer is measured, each between two
// measurements of its reference (CVMD_BENCH_ROUNDS, default 2).
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
	addr string
}

func startIngressProc(t *testing.T, p *proc, settings *config.IngressSettings, attestationEdge *os.File) *ingressProc {
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
	return &ingressProc{childProc: startChild(t, "ingress", settings, fds), addr: ln.Addr().String()}
}

// cpuOf is the user+system CPU time of process pid so far.
func cpuOf(t *testing.T, pid int) float64 {
	return (&proc{cmd: &exec.Cmd{Process: &os.Process{Pid: pid}}}).cpuSeconds(t)
}

// sha3WallRate hashes data once on one locked OS thread and returns MiB/s
// of wall-clock time: the reference the uploads are divided by, measured
// under the same load as they are.
func sha3WallRate(data []byte, total int64) (float64, [32]byte) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h := sha3.New256()
	start := time.Now()
	for n := int64(0); n < total; n += int64(len(data)) {
		h.Write(data[:min(int64(len(data)), total-n)])
	}
	el := time.Since(start)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return float64(total) / (1 << 20) / el.Seconds(), sum
}

// readRate reads path sequentially in 1 MiB reads (what the agent's
// download does) and returns MiB/s of wall-clock time.
func readRate(t *testing.T, path string) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	el := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	return float64(n) / (1 << 20) / el.Seconds()
}

// runCVM runs bin/cvm with env and args, and returns its wall-clock time
// and CPU time.
func runCVM(t *testing.T, bin string, env []string, args ...string) (time.Duration, float64) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("cvm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	el := time.Since(start)
	return el, (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
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
// simulated SNP+vTPM evidence, or TLS) → the agent child → tmpfs (the CVM's
// root), and back for the results. Each upload runs between two
// measurements of its reference, one core's SHA3-256 of the same bytes, and
// each download between two sequential reads of the results file, so that
// reference and transfer see the same load; the ratios are the medians of
// the per-transfer ratios.
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
	ref0, sum := sha3WallRate(pat, size)
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

	// The two ingress children, each in the mode of its computation.
	caFile, certPEM, keyPEM := tlsIdentity(t, dir)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{}`), 0o600)
	ingresses := map[string]*ingressProc{
		"atls":  startIngressProc(t, p, &config.IngressSettings{AttestedTls: true, PlatformType: int32(attest.SNPvTPM)}, serveAttestation(t)),
		"tls":   startIngressProc(t, p, &config.IngressSettings{CertFile: certPEM, KeyFile: keyPEM}, nil),
		"plain": startIngressProc(t, p, &config.IngressSettings{}, nil),
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
	refs := []float64{ref0}
	rates, ratios := map[string][]float64{}, map[string][]float64{}
	clearPeakRSS(t, p.cmd.Process.Pid)
	for r := range rounds {
		for _, mode := range modes {
			name := fmt.Sprintf("%s-%d.bin", mode, r)
			ing := ingresses[mode]
			a0, i0 := p.cpuSeconds(t), cpuOf(t, ing.cmd.Process.Pid)
			stopPerf := perfRecord(t, "upload-"+name, p.cmd.Process.Pid, ing.cmd.Process.Pid)
			el, cvmCPU := runCVM(t, cvm, envs[mode], "data", filepath.Join(in, name), owner.KeyFile)
			stopPerf()
			a1, i1 := p.cpuSeconds(t), cpuOf(t, ing.cmd.Process.Pid)
			os.Remove(filepath.Join(state, "computation", "datasets", name)) // keep tmpfs small
			ref, _ := sha3WallRate(pat, size)
			rate := float64(size) / (1 << 20) / el.Seconds()
			ratio := 100 * rate / ((refs[len(refs)-1] + ref) / 2)
			refs = append(refs, ref)
			rates[mode], ratios[mode] = append(rates[mode], rate), append(ratios[mode], ratio)
			t.Logf("%s upload %d: %.1f MiB/s, %.0f %% of SHA3 (%.1f / %.1f MiB/s around it); CPU s/GiB: cvm %.2f, ingress %.2f, agent %.2f",
				mode, r, rate, ratio, refs[len(refs)-2], ref, cvmCPU/gib, (i1-i0)/gib, (a1-a0)/gib)
			testutil.Bench(fmt.Sprintf("upload_%s_cpu_s_per_gib_%d", mode, r), (cvmCPU+i1-i0+a1-a0)/gib, "s",
				fmt.Sprintf("cvm %.2f, ingress %.2f, agent %.2f", cvmCPU/gib, (i1-i0)/gib, (a1-a0)/gib))
		}
	}
	rss := p.peakRSSMiB(t)
	testutil.Bench("sha3_ref_mib_s", median(refs), "MiB/s", fmt.Sprintf("one core's SHA3-256, %d measurements interleaved with the uploads", len(refs)))
	for _, mode := range modes {
		testutil.Bench(fmt.Sprintf("upload_%s_mib_s", mode), median(rates[mode]), "MiB/s", fmt.Sprintf("median of %d", len(rates[mode])))
		testutil.Bench(fmt.Sprintf("%s_upload_of_sha3_pct", mode), median(ratios[mode]), "pct", fmt.Sprintf("each upload ÷ the SHA3 rate measured around it; target ≥ 80"))
	}
	testutil.Bench("agent_peak_rss_mib", rss, "MiB", "VmHWM over the uploads; target ≤ 64")

	// Results: the algorithm writes 1 GiB, the agent zips it (stored).
	if err := waitFor(p, "ConsumingResults", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	zipPath := filepath.Join(state, "results.zip")
	out := filepath.Join(dir, "out")
	diskRefs := []float64{readRate(t, zipPath)}
	var dl, dlRatios []float64
	clearPeakRSS(t, p.cmd.Process.Pid)
	for r := range rounds {
		a0, i0 := p.cpuSeconds(t), cpuOf(t, ingresses["atls"].cmd.Process.Pid)
		stopPerf := perfRecord(t, fmt.Sprintf("result-%d", r), p.cmd.Process.Pid, ingresses["atls"].cmd.Process.Pid)
		el, cvmCPU := runCVM(t, cvm, envs["atls"], "result", consumer.KeyFile, "-o", out)
		stopPerf()
		a1, i1 := p.cpuSeconds(t), cpuOf(t, ingresses["atls"].cmd.Process.Pid)
		st, err := os.Stat(filepath.Join(out, "results.zip"))
		if err != nil || st.Size() < size {
			t.Fatalf("results: %v %v", st, err)
		}
		os.Remove(filepath.Join(out, "results.zip"))
		ref := readRate(t, zipPath)
		rate := float64(st.Size()) / (1 << 20) / el.Seconds()
		ratio := 100 * rate / ((diskRefs[len(diskRefs)-1] + ref) / 2)
		diskRefs = append(diskRefs, ref)
		dl, dlRatios = append(dl, rate), append(dlRatios, ratio)
		t.Logf("result download %d (aTLS): %.1f MiB/s, %.0f %% of the disk's read (%.1f / %.1f MiB/s around it); CPU s/GiB: cvm %.2f, ingress %.2f, agent %.2f",
			r, rate, ratio, diskRefs[len(diskRefs)-2], ref, cvmCPU/gib, (i1-i0)/gib, (a1-a0)/gib)
		testutil.Bench(fmt.Sprintf("result_cpu_s_per_gib_%d", r), (cvmCPU+i1-i0+a1-a0)/gib, "s",
			fmt.Sprintf("cvm %.2f, ingress %.2f, agent %.2f", cvmCPU/gib, (i1-i0)/gib, (a1-a0)/gib))
	}
	testutil.Bench("disk_read_ref_mib_s", median(diskRefs), "MiB/s", fmt.Sprintf("results.zip read sequentially in 1 MiB reads (tmpfs), %d measurements interleaved", len(diskRefs)))
	testutil.Bench("result_download_mib_s", median(dl), "MiB/s", "cvm result through the aTLS ingress, written to tmpfs")
	testutil.Bench("result_of_disk_pct", median(dlRatios), "pct", "each download ÷ the read rate measured around it; target ≥ 80")
	testutil.Bench("agent_peak_rss_download_mib", p.peakRSSMiB(t), "MiB", "VmHWM over the downloads")
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
