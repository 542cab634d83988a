package vm

import (
	"archive/zip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/images/qemu"
	"github.com/cvmd/cvmd/proto/cvms"
)

// children are the supervisor's children started at boot (table.Default in supervisor/table).
var children = []string{"logfwd", "attestation", "egress", "runner", "agent", "ingress"}

// algoSource is the `bin` algorithm: a dynamically linked C program (so the
// image's libc is what runs it) that sums the integers of every dataset and
// multiplies by its first argument.
const algoSource = `#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
	long scale = argc > 1 ? atol(argv[1]) : 1, sum = 0, v;
	DIR *d = opendir("/cocos/datasets");
	struct dirent *e;
	char path[4096];
	if (!d) { perror("datasets"); return 2; }
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		snprintf(path, sizeof path, "/cocos/datasets/%s", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f) { perror(path); return 3; }
		while (fscanf(f, "%ld", &v) == 1) sum += v;
		fclose(f);
	}
	FILE *o = fopen("/cocos/results/result.txt", "w");
	if (!o) { perror("results"); return 4; }
	fprintf(o, "sum %ld\n", sum * scale);
	printf("algorithm done: sum %ld\n", sum * scale);
	return fclose(o) == 0 ? 0 : 5;
}
`

// e2e is one end-to-end run's fixtures.
type e2e struct {
	t        *testing.T
	dir      string
	cvm      string
	key      string // private key of every role
	pub      string
	algo     string
	datasets []string
	g        *guest
	mgr      *devmanager.Server
	akHash   string      // SHA-256 of the vTPM's AK, provisioned before boot
	table    string      // expected child table hash
	netns    *qemu.NetNS // the VM's network namespace, where cvm runs; nil: the host's
}

// cvmRun runs the cvm CLI against the guest's forwarded port.
func (e *e2e) cvmRun(step string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.cvm, args...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "AGENT_GRPC_URL="+e.g.vm.HostAddr())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := cmd.Start
	if e.netns != nil {
		start = func() error { return e.netns.Do(cmd.Start) }
	}
	if err := start(); err != nil {
		return "", err
	}
	err := cmd.Wait()
	return out.String(), err
}

// mustCVM runs cvm and fails the step with the serial log on error.
func (e *e2e) mustCVM(step string, timeout time.Duration, args ...string) string {
	e.t.Helper()
	out, err := e.cvmRun(step, timeout, args...)
	if err != nil {
		e.g.fatalf(step, "cvm %s: %v\n%s\nmanager saw:\n%s", strings.Join(args, " "), err, out, e.managerTail(40))
	}
	return out
}

// managerTail is the last n messages the manager received, one a line.
func (e *e2e) managerTail(n int) string {
	ms := e.mgr.Messages()
	if len(ms) > n {
		ms = ms[len(ms)-n:]
	}
	var b strings.Builder
	for _, r := range ms {
		fmt.Fprintf(&b, "  %s %s\n", r.Stream, devmanager.Format(r.Msg))
	}
	return b.String()
}

// waitManager waits until the manager has received a message satisfying ok.
func (e *e2e) waitManager(step string, timeout time.Duration, ok func(*cvms.ClientStreamMessage) bool) *cvms.ClientStreamMessage {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var found *cvms.ClientStreamMessage
	err := e.mgr.Wait(ctx, func(rs []devmanager.Received) bool {
		for _, r := range rs {
			if ok(r.Msg) {
				found = r.Msg
				return true
			}
		}
		return false
	})
	if err != nil {
		e.g.fatalf(step, "the manager did not get it: %v\nmanager received:\n%s", err, e.managerTail(60))
	}
	return found
}

// supervisorEvent matches an AgentEvent from the supervisor of the given type
// whose details mention all of want.
func supervisorEvent(typ string, want ...string) func(*cvms.ClientStreamMessage) bool {
	return func(m *cvms.ClientStreamMessage) bool {
		ev := m.GetAgentEvent()
		if ev == nil || ev.GetEventType() != typ {
			return false
		}
		d := string(ev.GetDetails())
		for _, w := range want {
			if !strings.Contains(d, w) {
				return false
			}
		}
		return true
	}
}

func runResOf(id string) func(*cvms.ClientStreamMessage) bool {
	return func(m *cvms.ClientStreamMessage) bool {
		r := m.GetRunRes()
		return r != nil && r.GetComputationId() == id
	}
}

// computation builds the manifest the manager sends.
func (e *e2e) computation(id string) *cvms.ComputationRunReq {
	e.t.Helper()
	req, err := devmanager.Spec{
		ID: id, Name: "vm e2e " + id, Algorithm: e.algo, AlgoType: "bin",
		Datasets: e.datasets, PublicKey: e.pub,
	}.Build()
	if err != nil {
		e.t.Fatalf("building computation %s: %v", id, err)
	}
	return req
}

// verified is what `cvm attestation verify --json` prints on success.
type verified struct {
	OK        bool              `json:"ok"`
	Platform  string            `json:"platform"`
	Simulated bool              `json:"simulated"`
	Checks    []string          `json:"checks"`
	AK        string            `json:"ak_sha256"`
	Restarts  map[string]uint32 `json:"restarts"`
}

// attest fetches vTPM evidence through the ingress with a fresh nonce and
// verifies it with `cvm attestation verify`: the quote against the
// provisioned AK, the nonce, the event log replayed to the PCRs, and the
// sandbox-spec (child table) measurement. It also checks that a wrong nonce
// and a wrong child table are refused, each naming the failed check.
func (e *e2e) attest(step string) verified {
	e.t.Helper()
	nonce := make([]byte, 32)
	rand.Read(nonce)
	file := filepath.Join(e.dir, "attestation.bin")
	e.mustCVM(step+": get", 2*time.Minute, "attestation", "get", "vtpm", "--vtpm", hex.EncodeToString(nonce), "-o", file)
	args := func(nonce []byte, table string) []string {
		return []string{"attestation", "verify", file, "--json", "--vtpm", hex.EncodeToString(nonce), "--child-table", table, "--ak", e.akHash}
	}
	out := e.mustCVM(step+": verify", time.Minute, args(nonce, e.table)...)
	var v verified
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		e.g.fatalf(step+": verify", "cvm attestation verify --json printed %q: %v", out, err)
	}
	if !v.OK || v.Simulated || v.Platform != "vTPM" {
		e.g.fatalf(step+": verify", "verdict %+v, want a real vTPM", v)
	}
	for _, want := range []string{"vtpm.ak (pinned)", "vtpm.quote", "vtpm.nonce", "vtpm.eventlog", "cvmd.child_table"} {
		if !slices.Contains(v.Checks, want) {
			e.g.fatalf(step+": verify", "check %q did not run (ran %q)", want, v.Checks)
		}
	}
	if out, err := e.cvmRun(step, time.Minute, args(make([]byte, 32), e.table)...); err == nil || !strings.Contains(out, "nonce") {
		e.g.fatalf(step+": wrong nonce", "verify with a nonce the evidence was not made for: %v\n%s", err, out)
	}
	if out, err := e.cvmRun(step, time.Minute, args(nonce, strings.Repeat("0", 64))...); err == nil || !strings.Contains(out, "cvmd.child_table") {
		e.g.fatalf(step+": wrong child table", "verify with a wrong child table: %v\n%s", err, out)
	}
	e.t.Logf("%s: verified %q, restarts %v", step, v.Checks, v.Restarts)
	return v
}

// checkIMA downloads the guest's IMA list with `cvm ima-measurements
// --quote`: cvm replays it against PCR 10 of a verified vTPM quote over a
// fresh nonce. The algorithm that ran must be in it, by its SHA-256.
func (e *e2e) checkIMA(step string) {
	e.t.Helper()
	file := filepath.Join(e.dir, "ima.txt")
	out := e.mustCVM(step+": download", 2*time.Minute, "ima-measurements", file, "--quote", "--ak", e.akHash)
	if !strings.Contains(out, "verified vTPM quote") {
		e.g.fatalf(step+": download", "cvm ima-measurements printed %q", out)
	}
	list, err := os.ReadFile(file)
	if err != nil {
		e.g.fatalf(step+": read", "%v", err)
	}
	algo, err := os.ReadFile(e.algo)
	if err != nil {
		e.g.fatalf(step+": read", "%v", err)
	}
	sum := sha256.Sum256(algo)
	if !strings.Contains(string(list), "ima-ng sha256:"+hex.EncodeToString(sum[:])+" ") {
		e.g.fatalf(step+": algorithm measured", "the IMA list (%d lines) has no ima-ng entry with the algorithm's sha256 %x", strings.Count(string(list), "\n"), sum)
	}
	e.t.Logf("%s: %d measurements, the algorithm's among them", step, strings.Count(string(list), "\n"))
}

// runComputation uploads the algorithm and the datasets, downloads the
// result and checks it.
func (e *e2e) runComputation(id, want string) {
	e.t.Helper()
	step := "computation " + id
	e.mustCVM(step+": upload algorithm", 2*time.Minute, "algo", e.algo, e.key, "-a", "bin", "--args", "3")
	for _, d := range e.datasets {
		e.mustCVM(step+": upload dataset", 2*time.Minute, "data", d, e.key)
	}
	out := filepath.Join(e.dir, "results-"+id)
	var last string
	deadline := time.Now().Add(4 * time.Minute)
	for {
		o, err := e.cvmRun(step+": result", 2*time.Minute, "result", e.key, "-o", out)
		if err == nil {
			break
		}
		last = o
		if time.Now().After(deadline) {
			e.g.fatalf(step+": result", "no result after 4 minutes; last cvm answer:\n%s\nmanager saw:\n%s", last, e.managerTail(40))
		}
		time.Sleep(2 * time.Second)
	}
	got := readZipFile(e.t, filepath.Join(out, "results.zip"), "result.txt")
	if got != want {
		e.g.fatalf(step+": check result", "result.txt = %q, want %q", got, want)
	}
}

func readZipFile(t *testing.T, path, name string) string {
	t.Helper()
	z, err := zip.OpenReader(path)
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	defer z.Close()
	var names []string
	for _, f := range z.File {
		names = append(names, f.Name)
		if filepath.Base(f.Name) == name {
			r, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			b := make([]byte, 4096)
			n, _ := r.Read(b)
			return string(b[:n])
		}
	}
	t.Fatalf("%s has no %s (entries %q)", path, name, names)
	return ""
}

// waitChildrenReady waits for a "child ready" line of each boot child and
// returns the index and time of the last. Any generation counts: when the
// manager's computation arrives during boot, the per-computation runner is
// restarted as generation 2 before it was ever used.
func (g *guest) waitChildrenReady(step string, from int, names []string, timeout time.Duration) (int, qemu.Line) {
	g.t.Helper()
	last, lastLine := from, qemu.Line{}
	for _, n := range names {
		i, l := g.wait(step, from, fmt.Sprintf(`msg="child ready" .*child=%s generation=\d+\b`, regexp.QuoteMeta(n)), timeout)
		if i > last || lastLine.Text == "" {
			last, lastLine = max(i, last), l
		}
	}
	return last, lastLine
}

// setupE2E builds everything and boots the image with the manager attached.
func setupE2E(t *testing.T) *e2e {
	requireQEMU(t)
	e := newE2E(t)
	cvmd := cvmdBinary(t)

	extra := filepath.Join(e.dir, "extra")
	os.MkdirAll(filepath.Join(extra, "etc/cvmd"), 0o755)
	os.WriteFile(filepath.Join(extra, "etc/cvmd/debug-port"), nil, 0o644)
	img := buildImage(t, "vmtest-cvmd", cvmd, extra)

	mgrAddr := e.startManager(e.computation("1"))
	envDir, vmDir := e.guestDirs("vm-e2e")
	e.akHash = provisionAK(t, filepath.Join(vmDir, "tpm"))
	e.table = childTableHash(t, cvmd)
	e.g = boot(t, qemu.Config{
		Kernel: img.Kernel, Initrd: img.Initrd, TPM: true, EnvDir: envDir, Dir: vmDir,
		ManagerAddr: mgrAddr, DebugPort: true, MemoryMiB: 2048,
	})
	return e
}

// startManager serves the development manager on a loopback port, sending
// first when the guest connects, until the test ends; it returns the
// manager's address.
func (e *e2e) startManager(first *cvms.ComputationRunReq) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.serveManager(ln, first)
	return ln.Addr().String()
}

// serveManager serves the development manager on ln, sending first when
// the guest connects, until the test ends.
func (e *e2e) serveManager(ln net.Listener, first *cvms.ComputationRunReq) {
	t := e.t
	mlog, err := os.Create(filepath.Join(e.dir, "manager.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mlog.Close() })
	e.mgr = devmanager.New(devmanager.Options{Computation: first, Out: mlog})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { devmanager.Serve(ctx, ln, e.mgr, nil); close(served) }()
	t.Cleanup(func() { cancel(); <-served })
}

// guestDirs makes the environment file the manager shares (env_share) and
// the VM's own directory (vTPM state, serial log).
func (e *e2e) guestDirs(cvmID string) (envDir, vmDir string) {
	envDir = filepath.Join(e.dir, "env")
	os.MkdirAll(envDir, 0o755)
	os.WriteFile(filepath.Join(envDir, "environment"), []byte(
		"AGENT_LOG_LEVEL=info\nAGENT_CVM_ID="+cvmID+"\nAGENT_CVM_GRPC_URL="+qemu.GuestManagerAddr+"\n"), 0o644)
	vmDir = filepath.Join(e.dir, "vm")
	os.MkdirAll(vmDir, 0o755)
	return envDir, vmDir
}

// newE2E makes the parties' files: keys, the algorithm, the datasets.
func newE2E(t *testing.T) *e2e {
	e := &e2e{t: t, dir: t.TempDir()}
	e.cvm = cvmBinary(t)
	e.mustLocal("keys", e.cvm, "keys", "-k", "ecdsa", "--dir", e.dir)
	e.key, e.pub = filepath.Join(e.dir, "private.pem"), filepath.Join(e.dir, "public.pem")
	src := filepath.Join(e.dir, "sum.c")
	os.WriteFile(src, []byte(algoSource), 0o644)
	e.algo = filepath.Join(e.dir, "sum")
	e.mustLocal("compile algorithm", "gcc", "-O2", "-o", e.algo, src)
	for name, data := range map[string]string{"a.csv": "1\n2\n3\n", "b.csv": "10 20\n"} {
		p := filepath.Join(e.dir, name)
		os.WriteFile(p, []byte(data), 0o644)
		e.datasets = append(e.datasets, p)
	}
	return e
}

func (e *e2e) mustLocal(step, name string, args ...string) {
	e.t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		e.t.Fatalf("%s: %s %s: %v\n%s", step, name, strings.Join(args, " "), err, out)
	}
}

// TestE2E is the whole system in the VM: cvmd as PID 1, the development
// manager sending a computation over guestfwd, the cvm CLI through hostfwd,
// a child killed inside the guest and restarted, a second computation, and
// an orderly ACPI power-off.
func TestE2E(t *testing.T) {
	if os.Getenv("CVMD_BENCH_VM") == "1" {
		t.Skip("make bench-vm runs the end to end inside TestBenchVM")
	}
	runE2E(t)
}

// runE2E runs the whole scenario and returns the time from qemu's start to
// its exit.
func runE2E(t *testing.T) time.Duration {
	start := time.Now()
	e := setupE2E(t)
	g := e.g

	ready, _ := g.waitChildrenReady("boot: every child ready", 0, children, 5*time.Minute)
	// In the VM PID 1 runs one sealed copy of the binary, which IMA hashes
	// once, rather than a fresh overlay per spawn, which it would hash at
	// every spawn (supervisor/pid1/init.go, sealing).
	g.wait("boot: binary sealed by one copy", 0, `msg="binary sealed by one memfd copy" proc=pid1 why="IMA measures each spawn's overlay anew`, time.Second)
	// The cgroup static keys are switched on before any sandbox: switched
	// by the first sandbox's cgroup, under TCG, they livelocked boots
	// (supervisor/pid1/cgroupwarm.go).
	g.wait("boot: cgroup static keys on", 0, `msg="pid1: cgroup static keys switched on before any sandbox"`, time.Second)
	// Without a scratch disk the computation stays in memory, as before,
	// and says so (scratch_test.go has the disk).
	g.wait("boot: storage in memory", 0, `msg="pid1: storage: memory \(tmpfs\)" .*reason="no scratch disk`, time.Second)
	e.waitManager("boot: storage announced", 2*time.Minute, supervisorEvent("storage.ready", `"kind":"memory"`))
	e.waitManager("manager link: computation 1 accepted", 3*time.Minute, runResOf("1"))
	if r := e.waitManager("", time.Second, runResOf("1")).GetRunRes(); r.GetError() != "" {
		g.fatalf("manager link: computation 1 accepted", "run_res error %q", r.GetError())
	}

	e.attest("attestation at boot")
	e.runComputation("1", "sum 108\n")
	t.Logf("computation 1 done at %v", time.Since(start).Round(time.Second))
	e.checkIMA("IMA after computation 1")

	// A crash inside the guest: the supervisor restarts the child, rewires
	// it, and tells the manager.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	ans, err := g.vm.Debug(ctx, "kill egress")
	cancel()
	if err != nil || !strings.HasPrefix(ans, "killed egress") {
		g.fatalf("kill a child", "debug port: %q, %v", ans, err)
	}
	g.wait("killed child restarted", ready, `msg="child ready" .*child=egress generation=2\b`, 2*time.Minute)
	e.waitManager("restart reported to the manager", 2*time.Minute, supervisorEvent("child.exited", "egress"))
	e.waitManager("restart reported to the manager", 2*time.Minute, supervisorEvent("child.ready", "egress"))
	if res := e.attest("attestation after the restart"); res.Restarts["egress"] < 2 {
		g.fatalf("attestation after the restart", "the measurement log shows egress at generation %d, want ≥ 2", res.Restarts["egress"])
	}

	// A second computation after the first is stopped.
	if err := e.mgr.Command("stop 1"); err != nil {
		g.fatalf("stop computation 1", "%v", err)
	}
	e.waitManager("stop computation 1", 2*time.Minute, func(m *cvms.ClientStreamMessage) bool {
		return m.GetStopComputationRes().GetComputationId() == "1"
	})
	if err := e.mgr.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReq{RunReq: e.computation("2")}}); err != nil {
		g.fatalf("send computation 2", "%v", err)
	}
	e.waitManager("computation 2 accepted", 3*time.Minute, runResOf("2"))
	e.runComputation("2", "sum 108\n")

	took := g.powerOff(2 * time.Minute)
	g.wait("orderly shutdown", ready, `msg="shutting down" proc=supervisor`, time.Second)
	t.Logf("end to end %v (power-off %v)", time.Since(start).Round(time.Second), took.Round(time.Millisecond))
	return time.Since(g.vm.Started())
}
