package runner_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/config"
	pb "github.com/cvmd/cvmd/proto/runner"
	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/algosandbox"
)

// withPlatformSecrets makes /etc/cocos/environment exist for the test (as in
// a CVM) unless it already does, and removes what it made.
func withPlatformSecrets(t *testing.T) string {
	t.Helper()
	return withSecretFile(t, "/etc/cocos", "/etc/cocos/environment", "AWS_SECRET_ACCESS_KEY=platform-secret\n")
}

// withManagerKey makes /etc/certs/key.pem exist (the manager link's mTLS
// client key in a CVM) unless it already does, and removes what it made.
func withManagerKey(t *testing.T) string {
	t.Helper()
	return withSecretFile(t, "/etc/certs", "/etc/certs/key.pem", "-----BEGIN EC PRIVATE KEY-----\nnot-for-algorithms\n")
}

func withSecretFile(t *testing.T, dir, file, content string) string {
	t.Helper()
	if _, err := os.Stat(file); err == nil {
		return file
	}
	made := false
	if _, err := os.Stat(dir); err != nil {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Skipf("cannot make %s: %v", dir, err)
		}
		made = true
	}
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(file)
		if made {
			os.Remove(dir)
		}
	})
	return file
}

// TestEscapeAttempts runs each attempt as an algorithm: it must fail (the
// program prints "blocked:") and the run must end as the case says.
func TestEscapeAttempts(t *testing.T) {
	secrets := withPlatformSecrets(t)
	managerKey := withManagerKey(t)
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	w := newWorld(t, worldOpts{
		max:      algosandbox.Limits{MemoryBytes: 64 << 20, Pids: 48, ResultsBytes: 4 << 20},
		settings: &config.RunnerSettings{},
	})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	w.putFile(t, "datasets/tool", testBinary(t, "escape"), 0o755)
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" = the run succeeds
	}{
		{"read the platform environment file", []string{"read", secrets}, ""},
		{"read the manager link's client key", []string{"read", managerKey}, ""},
		{"read the agent's state", []string{"read", filepath.Join(w.state, "agent", "secret")}, ""},
		{"read the computation dir by host path", []string{"read", filepath.Join(w.comp, "algo")}, ""},
		{"see other processes", []string{"ps"}, ""},
		{"mount", []string{"mount"}, ""},
		{"ptrace", []string{"ptrace"}, ""},
		{"unshare namespaces", []string{"unshare"}, ""},
		{"load a kernel module", []string{"module"}, ""},
		{"bpf", []string{"bpf"}, ""},
		{"use the kernel keyring", []string{"keyring"}, ""},
		{"execute a dataset", []string{"exec", "/cocos/datasets/tool"}, ""},
		{"write the algorithm", []string{"write", "/cocos/algo"}, ""},
		{"write into datasets", []string{"write", "/cocos/datasets/x"}, ""},
		{"write into the base root", []string{"write", "/etc/x"}, ""},
		{"write at the root", []string{"write", "/x"}, ""},
		{"tcp to a host loopback server", []string{"connect", hostLn.Addr().String()}, ""},
		{"tcp to the outside", []string{"connect", "1.1.1.1:80"}, ""},
		{"tcp to a private address", []string{"connect", "10.0.2.2:80"}, ""},
		{"tcp to the outside over IPv6", []string{"connect", "[2606:4700:4700::1111]:80"}, ""},
		{"listen on vsock", []string{"vsock"}, ""},
		{"socket(AF_VSOCK) through the 32-bit syscall entry", []string{"int80"}, ""},
		{"ask a socket for the interface table", []string{"ioctl"}, ""},
		{"execute a copy from /tmp, /dev/shm, results or a memfd", []string{"memexec"}, ""},
		{"take another process's fd with pidfd_getfd", []string{"pidfd_getfd"}, ""},
		{"fork bomb", []string{"forkbomb"}, ""},
		{"fill results past the cap", []string{"fill"}, "results over quota"},
		{"a sparse results file far past the cap", []string{"sparse"}, "results over quota"},
		{"one results file under many hard links", []string{"hardlinks"}, "results over quota"},
		{"empty results files past the file cap", []string{"files"}, "results over quota"},
		{"allocate past the memory limit", []string{"oom"}, "out of memory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w.rec.reset()
			resp := w.run(t, "bin", tc.args...)
			out := strings.Join(w.rec.output("stdout"), "\n")
			if strings.Contains(out, "ESCAPED") {
				t.Fatalf("escape succeeded: %s", out)
			}
			if tc.wantErr == "" {
				if resp.GetError() != "" {
					t.Fatalf("run failed: %s\nlogs:\n%s", resp.GetError(), w.rec.all())
				}
				if !strings.Contains(out, "blocked:") {
					t.Fatalf("attempt did not report being blocked:\n%s", w.rec.all())
				}
				t.Log(out)
				return
			}
			if !strings.Contains(resp.GetError(), tc.wantErr) {
				t.Fatalf("run error %q, want it to contain %q\nlogs:\n%s", resp.GetError(), tc.wantErr, w.rec.all())
			}
			t.Log(resp.GetError())
		})
	}
	select {
	case <-accepted:
		t.Error("the host loopback server accepted a connection from an algorithm")
	default:
	}
	for _, f := range []string{"big", "sparse", "one"} {
		if _, err := os.Stat(filepath.Join(w.comp, "results", f)); err == nil {
			t.Errorf("results over quota were copied out (%s)", f)
		}
	}
}

// TestSocketFamilies runs socket(2) (stream, dgram, seqpacket and raw) and
// socketpair(2) for every address family number from 0 to 63 inside an
// algorithm sandbox: only AF_UNIX, AF_INET and AF_INET6 get past the
// filter, socketpair only for AF_UNIX; everything else fails with EPERM.
func TestSocketFamilies(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	resp := w.run(t, "bin", "sockets")
	out := w.rec.output("stdout")
	if resp.GetError() != "" {
		t.Fatalf("run failed: %s\n%s", resp.GetError(), w.rec.all())
	}
	got := map[int][]string{}
	for _, l := range out {
		var n int
		if _, err := fmt.Sscanf(l, "family %d", &n); err == nil {
			got[n] = strings.Fields(l)[2:]
		}
	}
	names := map[int]string{}
	for _, f := range sandbox.SocketFamilies {
		names[f.Number] = f.Name
	}
	allowed := map[string]bool{"AF_UNIX": true, "AF_INET": true, "AF_INET6": true}
	for n := 0; n < 64; n++ {
		name := names[n]
		if name == "" {
			name = fmt.Sprintf("family %d (beyond AF_MAX)", n)
		}
		t.Run(name, func(t *testing.T) {
			res, ok := got[n]
			if !ok || len(res) != 5 {
				t.Fatalf("no result for family %d in:\n%s", n, strings.Join(out, "\n"))
			}
			sockets, pair := res[:4], strings.TrimPrefix(res[4], "pair:")
			refused := !slices.ContainsFunc(sockets, func(r string) bool { return r != "EPERM" })
			if refused == allowed[name] {
				t.Errorf("socket(%s) stream/dgram/seqpacket/raw: %v; want refused = %v", name, sockets, !allowed[name])
			}
			if (pair == "EPERM") == (name == "AF_UNIX") {
				t.Errorf("socketpair(%s): %s", name, pair)
			}
		})
	}
}

// TestMountinfoHidesHostPaths reads the algorithm's /proc/self/mountinfo:
// its root is the skeleton's own tmpfs and /etc/cocos an empty tmpfs, so
// neither the state dir nor the supervisor's run dir shows; the only host
// paths left are the sources of the binds it was given (its datasets and its
// copy of the algorithm), as docs/runner.md says.
func TestMountinfoHidesHostPaths(t *testing.T) {
	withPlatformSecrets(t)
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	w.put(t, "datasets/x.csv", []byte("x"), 0o644)
	if resp := w.run(t, "bin", "mountinfo"); resp.GetError() != "" {
		t.Fatalf("run: %s\n%s", resp.GetError(), w.rec.all())
	}
	lines := w.rec.output("stdout")
	seen := map[string]string{} // mount point → root
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		root, point := f[3], f[4]
		seen[point] = root
		if strings.Contains(l, w.state) && point != "/cocos/datasets" && point != "/cocos/algo" {
			t.Errorf("mountinfo shows a host path of the state dir: %s", l)
		}
	}
	if seen["/"] != "/" {
		t.Errorf("the root is %q of its file system, want \"/\" (the skeleton's own tmpfs)\n%s", seen["/"], strings.Join(lines, "\n"))
	}
	if seen["/etc/cocos"] != "/" {
		t.Errorf("/etc/cocos is %q, want an empty tmpfs\n%s", seen["/etc/cocos"], strings.Join(lines, "\n"))
	}
}

// TestSandboxProperties checks what the algorithm sees of itself: no
// capabilities, no_new_privs, seccomp, a non-root uid, a clean environment
// and a reachable proxy.
func TestSandboxProperties(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	for _, args := range [][]string{{"caps"}, {"env"}, {"proxy"}} {
		if resp := w.run(t, "bin", args...); resp.GetError() != "" {
			t.Fatalf("%v: %s\n%s", args, resp.GetError(), w.rec.all())
		}
	}
	out := w.rec.output("stdout")
	want := map[string]bool{"CapEff:\t0000000000000000": false, "CapPrm:\t0000000000000000": false,
		"CapBnd:\t0000000000000000": false, "NoNewPrivs:\t1": false, "Seccomp:\t2": false, "proxy reachable; env http://127.0.0.1:3128": false}
	for _, l := range out {
		if _, ok := want[l]; ok {
			want[l] = true
		}
		if strings.HasPrefix(l, "Uid:\t0") {
			t.Errorf("algorithm runs as root: %s", l)
		}
		if k, _, ok := strings.Cut(l, "="); ok && !strings.Contains(l, ":") || strings.HasPrefix(l, "PATH=") {
			switch strings.ToUpper(k) {
			case "PATH", "HOME", "LANG", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY":
			default:
				t.Errorf("unexpected environment variable %s", l)
			}
		}
	}
	for l, seen := range want {
		if !seen {
			t.Errorf("missing %q in:\n%s", l, strings.Join(out, "\n"))
		}
	}
}

// TestSetuidEscalation: a setuid-root binary given to the sandbox still
// runs as the sandbox's uid (nosuid mounts and no_new_privs).
func TestSetuidEscalation(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	suid := filepath.Join(w.work, "suid")
	os.MkdirAll(suid, 0o755)
	b, _ := os.ReadFile(testBinary(t, "escape"))
	if err := os.WriteFile(filepath.Join(suid, "escape"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(suid, "escape"), 0o4755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(suid, "plain"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	out, exit := runDirect(t, w, []string{"/opt/suid/plain", "setuid", "/opt/suid/escape"}, mount("work/suid", "/opt/suid"))
	if exit.GetExitCode() != 0 || !strings.Contains(out, "blocked:") || strings.Contains(out, "ESCAPED") {
		t.Fatalf("exit %v, output:\n%s", exit, out)
	}
	t.Log(out)
}

// TestStopLeavesNoProcess stops a run whose algorithm made a process tree:
// the run fails as stopped and no process of it remains.
func TestStopLeavesNoProcess(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	done := make(chan *pb.RunResponse, 1)
	go func() {
		resp, err := w.svc.Run(context.Background(), &pb.RunRequest{ComputationId: "c-stop", AlgoType: "bin", AlgorithmPath: "algo", Args: []string{"sleep", "120", "tree"}})
		if err != nil {
			resp = &pb.RunResponse{Error: "rpc: " + err.Error()}
		}
		done <- resp
	}()
	testutil.WaitUntil(t, 20*time.Second, "the algorithm's \"sleeping\" line", func() bool { return w.rec.has("stdout", "sleeping") })
	if n := countProcs(algoCmdline("sleep 120")); n < 4 {
		t.Fatalf("want the algorithm's 4 processes running, found %d", n)
	}
	start := time.Now()
	w.svc.Stop(context.Background(), &pb.StopRequest{ComputationId: "c-stop"})
	resp := <-done
	t.Logf("stopped in %v: %s", time.Since(start), resp.GetError())
	if !strings.Contains(resp.GetError(), "stopped") {
		t.Errorf("run error %q, want stopped", resp.GetError())
	}
	noneLeft(t, "sleep 120")
	if n := w.algo.Live(); n != 0 {
		t.Errorf("%d sandboxes live", n)
	}
}

// TestRunnerDeathKillsSandbox: when the runner's control channel ends (the
// runner died), the supervisor kills its sandboxes.
func TestRunnerDeathKillsSandbox(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	done := make(chan *pb.RunResponse, 1)
	go func() {
		resp, _ := w.svc.Run(context.Background(), &pb.RunRequest{ComputationId: "c-death", AlgoType: "bin", AlgorithmPath: "algo", Args: []string{"sleep", "121"}})
		done <- resp
	}()
	testutil.WaitUntil(t, 20*time.Second, "the algorithm's \"sleeping\" line", func() bool { return w.rec.has("stdout", "sleeping") })
	w.algo.KillAll()
	resp := <-done
	if !strings.Contains(resp.GetError(), "runner exited") {
		t.Errorf("run error %q, want the runner's death as reason", resp.GetError())
	}
	noneLeft(t, "sleep 121")
}

func TestWallClockLimit(t *testing.T) {
	w := newWorld(t, worldOpts{settings: &config.RunnerSettings{WallClockMs: 500}})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	resp := w.run(t, "bin", "sleep", "30")
	if !strings.Contains(resp.GetError(), "timed out") {
		t.Fatalf("run error %q, want timed out", resp.GetError())
	}
	noneLeft(t, "sleep 30")
}

// countProcs counts host processes whose command line contains s.
func countProcs(s string) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			n++
		}
	}
	return n
}

// noneLeft checks that no process of the algorithm (command line
// "/cocos/algo ARGS") is left.
func noneLeft(t *testing.T, args string) {
	t.Helper()
	if n := countProcs(algoCmdline(args)); n != 0 {
		t.Errorf("%d processes of the algorithm remain: %s", n, describeProcs(algoCmdline(args)))
	}
}

// algoCmdline is how an algorithm run with args shows in /proc/PID/cmdline
// (NULs as spaces). Matching the whole of it, not just the args, matters:
// "sleep 120" alone also matched a shell's sleep elsewhere on the machine,
// which made these tests fail while someone waited at a prompt.
func algoCmdline(args string) string { return "/cocos/algo " + args }

// describeProcs says, for each process whose command line contains s, its
// pid, state, parent and namespace pids (to tell a dying process from one
// that escaped its sandbox when a test finds one left).
func describeProcs(s string) string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			continue
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		var keep []string
		for _, l := range strings.Split(string(st), "\n") {
			for _, k := range []string{"State:", "PPid:", "NSpid:"} {
				if strings.HasPrefix(l, k) {
					keep = append(keep, strings.Join(strings.Fields(l), " "))
				}
			}
		}
		out = append(out, fmt.Sprintf("pid %s (%s)", e.Name(), strings.Join(keep, ", ")))
	}
	return strings.Join(out, "; ")
}

// TestLongLinesAreSplit: output without newlines is forwarded in pieces of
// at most max_line_bytes, never buffered whole.
func TestLongLinesAreSplit(t *testing.T) {
	w := newWorld(t, worldOpts{settings: &config.RunnerSettings{MaxLineBytes: 4096}})
	w.putFile(t, "algo", testBinary(t, "escape"), 0o600)
	if resp := w.run(t, "bin", "spew"); resp.GetError() != "" {
		t.Fatalf("run: %s", resp.GetError())
	}
	out, errs := w.rec.output("stdout"), w.rec.output("stderr")
	total := 0
	for _, l := range out {
		if len(l) > 4096 {
			t.Fatalf("a stdout record of %d bytes", len(l))
		}
		total += len(l)
	}
	if total != 8<<20 || len(out) != 2048 {
		t.Errorf("stdout: %d bytes in %d records, want %d in 2048", total, len(out), 8<<20)
	}
	if len(errs) != 3 { // 4096 + 4096 + 1808
		t.Errorf("stderr: %d records, want 3", len(errs))
	}
}
