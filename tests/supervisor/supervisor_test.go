package supervisor_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/sandbox"
)

type tableSpec struct {
	Edges []struct {
		Client string `json:"client"`
		Server string `json:"server"`
	} `json:"edges"`
	Children []tableChild `json:"children"`
}

type tableChild struct {
	Name    string `json:"name"`
	HostNet bool   `json:"host_net"`
	Standby bool   `json:"standby"`
	Seccomp struct {
		Name string `json:"name"`
	} `json:"seccomp"`
	Limits struct {
		MemoryBytes int64 `json:"memory_bytes"`
		Pids        int64 `json:"pids"`
	} `json:"limits"`
}

// edges counts the edges of the named child, either end.
func (t *tableSpec) edges(name string) int {
	n := 0
	for _, e := range t.Edges {
		if e.Client == name || e.Server == name {
			n++
		}
	}
	return n
}

// Child returns the named child of the printed table.
func (t *tableSpec) Child(name string) *tableChild {
	for i := range t.Children {
		if t.Children[i].Name == name {
			return &t.Children[i]
		}
	}
	return &tableChild{Name: name}
}

func printedTable(t *testing.T) (*tableSpec, string) {
	t.Helper()
	return printedTableOf(t, cvmd(t))
}

// printedTableOf is `bin supervise --print-sandbox`, parsed.
func printedTableOf(t *testing.T, bin string) (*tableSpec, string) {
	t.Helper()
	out, err := exec.Command(bin, "supervise", "--print-sandbox").Output()
	if err != nil {
		t.Fatal(err)
	}
	js, hash, ok := bytes.Cut(out, []byte("\nsha256 "))
	if !ok {
		t.Fatalf("no hash in --print-sandbox output:\n%s", out)
	}
	var tab tableSpec
	if err := json.Unmarshal(js, &tab); err != nil {
		t.Fatal(err)
	}
	return &tab, strings.TrimSpace(string(hash))
}

func nsOf(pid int, kind string) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	return l
}

// cgroupFile reads a v1 or v2 limit file of pid's cgroup for controller.
func cgroupFile(pid int, controller, v1file, v2file string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == controller {
				v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", controller, f[2], v1file))
				return strings.TrimSpace(string(v)), err
			}
		}
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", p, v2file))
			return strings.TrimSpace(string(v)), err
		}
	}
	return "", fmt.Errorf("no %s cgroup for %d", controller, pid)
}

func TestIsolation(t *testing.T) {
	d := startDev(t)
	// Every standby (a child's next incarnation, made ahead) is checked
	// like the child: it is built from the same table entry.
	st := d.waitAll(allStandbys(t), 30*time.Second, "every child's standby")
	tab, _ := printedTable(t)
	host := map[string]int{}    // child name → host pid
	standby := map[string]int{} // child name → its standby's host pid, for those the table gives one
	for _, c := range st.Children {
		host[c.Name] = d.hostPid(c.Pid)
		if host[c.Name] == 0 {
			t.Fatalf("no host pid for %s (ns pid %d)", c.Name, c.Pid)
		}
		if !tab.Child(c.Name).Standby {
			if c.StandbyPid != 0 {
				t.Errorf("%s has a standby (pid %d) its table entry does not declare", c.Name, c.StandbyPid)
			}
			continue
		}
		if standby[c.Name] = d.hostPid(c.StandbyPid); standby[c.Name] == 0 {
			t.Fatalf("no host pid for the standby of %s (ns pid %d)", c.Name, c.StandbyPid)
		}
	}
	proper := d.hostPid(st.Pid)
	// Nothing runs but PID 1, the supervisor proper, the children and the
	// standbys the table declares: standbys are bounded by the table.
	if n, want := len(d.inNS()), 2+len(host)+len(standby); n != want {
		t.Errorf("%d processes in the namespace, want %d (PID 1, the supervisor, %d children, %d standbys)", n, want, len(host), len(standby))
	}
	// each calls f for every child and every standby.
	each := func(f func(name, label string, pid int)) {
		for _, name := range childNames {
			f(name, name, host[name])
			if pid, ok := standby[name]; ok {
				f(name, name+" (standby)", pid)
			}
		}
	}

	t.Run("own namespaces", func(t *testing.T) {
		for _, kind := range []string{"mnt", "pid", "ipc", "uts", "net"} {
			seen := map[string]string{nsOf(proper, kind): "supervisor"}
			each(func(name, label string, pid int) {
				ns := nsOf(pid, kind)
				if ns == "" {
					t.Fatalf("%s: no %s namespace", label, kind)
				}
				if kind == "net" && name == "egress" {
					if ns != nsOf(proper, "net") {
						t.Errorf("%s must share the supervisor's network namespace", label)
					}
					return
				}
				if other, dup := seen[ns]; dup {
					t.Errorf("%s shares its %s namespace with %s", label, kind, other)
				}
				seen[ns] = label
			})
		}
	})
	t.Run("seccomp and capabilities", func(t *testing.T) {
		each(func(_, label string, pid int) {
			s := procStatus(pid)
			if s["Seccomp"] != "2" || s["CapEff"] != "0000000000000000" || s["CapPrm"] != "0000000000000000" || s["NoNewPrivs"] != "1" {
				t.Errorf("%s: Seccomp %q CapEff %q CapPrm %q NoNewPrivs %q", label, s["Seccomp"], s["CapEff"], s["CapPrm"], s["NoNewPrivs"])
			}
		})
	})
	t.Run("cgroup limits", func(t *testing.T) {
		each(func(name, label string, pid int) {
			c := tab.Child(name)
			mem, err := cgroupFile(pid, "memory", "memory.limit_in_bytes", "memory.max")
			if err != nil || mem != strconv.FormatInt(c.Limits.MemoryBytes, 10) {
				t.Errorf("%s: memory limit %q (%v), want %d", label, mem, err, c.Limits.MemoryBytes)
			}
			pids, err := cgroupFile(pid, "pids", "pids.max", "pids.max")
			if err != nil || pids != strconv.FormatInt(c.Limits.Pids, 10) {
				t.Errorf("%s: pids limit %q (%v), want %d", label, pids, err, c.Limits.Pids)
			}
		})
		// Each sandbox has a cgroup of its own.
		seen := map[string]string{}
		each(func(_, label string, pid int) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if other, dup := seen[string(b)]; dup {
				t.Errorf("%s shares its cgroups with %s", label, other)
			}
			seen[string(b)] = label
		})
	})
	t.Run("denied syscalls inside each sandbox", func(t *testing.T) {
		for _, c := range tab.Children {
			r := results(d.probe(c.Name, "syscalls"))
			eperm := []string{"mount", "unshare", "ptrace", "bpf", "kexec_load"}
			if c.Seccomp.Name == "fd-only" {
				eperm = append(eperm, "socket")
			} else if r["socket"] != "<nil>" {
				t.Errorf("%s (profile %s): socket: %q, want allowed", c.Name, c.Seccomp.Name, r["socket"])
			}
			for _, k := range eperm {
				if r[k] != "operation not permitted" {
					t.Errorf("%s: %s: %q, want EPERM", c.Name, k, r[k])
				}
			}
			if r["socketpair"] != "<nil>" {
				t.Errorf("%s: socketpair: %q, want allowed (edges need it)", c.Name, r["socketpair"])
			}
			if !strings.Contains(r["write-root"], "read-only file system") {
				t.Errorf("%s: writing / gave %q, want a read-only file system", c.Name, r["write-root"])
			}
			if r["write-exe"] == "<nil>" || r["write-exe"] == "" {
				t.Errorf("%s: writing its own binary gave %q, want an error (CVE-2019-5736)", c.Name, r["write-exe"])
			}
			if r["Seccomp"] != "2" || r["CapEff"] != "0000000000000000" {
				t.Errorf("%s: probe ran with Seccomp %q CapEff %q, want the child's sandbox", c.Name, r["Seccomp"], r["CapEff"])
			}
		}
	})
	t.Run("no socket files", func(t *testing.T) {
		named := namedUnixSockets()
		for _, pid := range d.inNS() {
			for _, ino := range socketInodes(pid) {
				if path, ok := named[ino]; ok {
					t.Errorf("pid %d holds a named unix socket %s", pid, path)
				}
			}
		}
	})
	t.Run("a standby is reachable only by the supervisor", func(t *testing.T) {
		// Its control channel and edges are socketpairs whose other ends the
		// supervisor holds until it adopts the standby: no child can send
		// it anything (nor it to them) before it has its config.
		peers := unixPeers(t)
		supervisor := map[string]bool{}
		for _, ino := range socketInodes(proper) {
			supervisor[ino] = true
		}
		for name, pid := range standby {
			n := 0
			for _, ino := range socketInodes(pid) {
				p, ok := peers[ino]
				if !ok || p == "0" {
					continue
				}
				n++
				if !supervisor[p] {
					t.Errorf("%s (standby): socket %s has its peer %s outside the supervisor", name, ino, p)
				}
			}
			if want := 1 + tab.edges(name); n < want {
				t.Errorf("%s (standby): %d sockets connected to the supervisor, want %d (control + edges)", name, n, want)
			}
		}
	})

	t.Run("ingress holds the listener", func(t *testing.T) {
		if st.Listen == "" {
			t.Fatal("no listen address in children.json")
		}
		if len(socketInodes(host["ingress"])) == 0 {
			t.Fatal("ingress has no sockets")
		}
		// Every socket ingress serves is non-blocking (the netpoller's): the
		// mode belongs to the open file, shared with the supervisor's copy of
		// the listener, and a blocking accept would not end at shutdown.
		pid := host["ingress"]
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, e := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); !strings.HasPrefix(l, "socket:") {
				continue
			}
			info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(info), "\n") {
				if v, ok := strings.CutPrefix(line, "flags:"); ok {
					if flags, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64); flags&unix.O_NONBLOCK == 0 {
						t.Errorf("ingress fd %s is in blocking mode (flags %s)", e.Name(), strings.TrimSpace(v))
					}
				}
			}
		}
	})
}

// namedUnixSockets maps socket inode → path for unix sockets bound to a path.
func namedUnixSockets() map[string]string {
	b, _ := os.ReadFile("/proc/net/unix")
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) >= 8 && strings.HasPrefix(f[7], "/") {
			m[f[6]] = f[7]
		}
	}
	return m
}

func socketInodes(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			out = append(out, strings.TrimSuffix(ino, "]"))
		}
	}
	return out
}

func TestForkBombHitsPidsLimit(t *testing.T) {
	d := startDev(t)
	out := d.probe("agent", "forkbomb")
	r := results(out)
	if !strings.Contains(r["forkbomb"], "stopped after") || !strings.Contains(r["forkbomb"], "resource temporarily unavailable") {
		t.Fatalf("fork bomb not stopped by the pids limit:\n%s", out)
	}
	n, _ := strconv.Atoi(strings.Fields(strings.TrimPrefix(r["forkbomb"], "stopped after "))[0])
	if n >= 64 {
		t.Errorf("fork bomb made %d processes under pids.max 64", n)
	}
	// The agent itself survives its own fork bomb.
	if s := d.status().child("agent"); s.Status != "ready" || s.Generation != 1 {
		t.Errorf("agent after fork bomb: %+v", s)
	}
}

func TestOOMKillsOnlyTheChild(t *testing.T) {
	d := startDev(t)
	before := d.status()
	agent := d.hostPid(before.child("agent").Pid)
	// Make the agent the OOM killer's choice in its cgroup, then exhaust the
	// cgroup's memory from inside the agent's sandbox.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", agent), []byte("1000"), 0); err != nil {
		t.Fatal(err)
	}
	exec.Command("nsenter", "-t", strconv.Itoa(d.pid1), "-p", "-m", "--", d.bin, "probe", "exec",
		filepath.Join(d.state, "run", "sandbox", "containers"), d.sandbox("agent"), "hog").Run()
	after := d.waitAll(func(s *status) bool {
		return s.child("agent").Generation == 2 && s.child("agent").Status == "ready"
	}, 30*time.Second, "agent restarted after OOM")
	d.waitLog(30*time.Second, "the OOM kill reported", "OOM-killed in its cgroup")
	for _, name := range childNames {
		if name == "agent" {
			continue
		}
		if b, a := before.child(name), after.child(name); b.Pid != a.Pid || a.Generation != 1 {
			t.Errorf("%s was disturbed by the agent's OOM: before %+v after %+v", name, b, a)
		}
	}
}

// TestKillEachChildIsReplacedAndRewired kills each child in turn, with no
// standbys (each replacement is a new sandbox) and once every child has its
// standby (each replacement is its standby, given its config and edges).
func TestKillEachChildIsReplacedAndRewired(t *testing.T) {
	t.Run("built", func(t *testing.T) {
		d := startDev(t, "--standby-after", "0")
		killEachChild(t, d, false)
	})
	t.Run("standby", func(t *testing.T) {
		d := startDev(t)
		d.waitAll(allStandbys(t), 30*time.Second, "every child's standby")
		killEachChild(t, d, true)
	})
}

// killEachChild kills each child in turn; with standby, the children whose
// table entry has one are replaced by it, the others by a new sandbox.
func killEachChild(t *testing.T, d *dev, standbys bool) {
	tab, _ := printedTable(t)
	// At boot, children started together share their edges without rewiring.
	checkEdgesConnected(t, d)
	for _, name := range childNames {
		standby := standbys && tab.Child(name).Standby
		before := d.status()
		old := before.child(name)
		if standby != (old.StandbyPid != 0) {
			t.Fatalf("%s: standby pid %d before it is killed, want one: %v", name, old.StandbyPid, standby)
		}
		if err := unix.Kill(d.hostPid(old.Pid), unix.SIGKILL); err != nil {
			t.Fatalf("kill %s: %v", name, err)
		}
		t0 := time.Now()
		after := d.waitAll(func(s *status) bool {
			c := s.child(name)
			return c.Generation == old.Generation+1 && c.Status == "ready"
		}, 30*time.Second, name+" replaced")
		t.Logf("%s: killed → replacement ready in %v", name, time.Since(t0).Round(time.Millisecond))
		if got := after.child(name); standby && got.Pid != old.StandbyPid {
			t.Errorf("%s: the replacement is pid %d, not its standby %d", name, got.Pid, old.StandbyPid)
		}
		if name == "agent" || name == "logfwd" {
			// The supervisor dials these: its gRPC call over the rewired edge
			// must be answered by the new generation.
			d.waitAll(func(s *status) bool {
				c := s.child(name)
				return c.Generation == old.Generation+1 && c.Serving
			}, 30*time.Second, name+" serving over the supervisor's new edge")
		}
		for _, other := range childNames {
			if other != name && before.child(other).Pid != after.child(other).Pid {
				t.Errorf("killing %s restarted %s", name, other)
			}
		}
	}
	// Every edge fd of every child now reaches a live peer: check with
	// sock_diag (ss) that each child's unix sockets are connected.
	checkEdgesConnected(t, d)
	// The supervisor's own edge to logfwd was rewired: its events reach the
	// new logfwd and are written to its queue.
	deadline := time.Now().Add(5 * time.Second)
	for !queueMentions(d.state, "child.ready") {
		if time.Now().After(deadline) {
			t.Fatal("no supervisor event reached logfwd's queue after the restarts")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkEdgesConnected asserts that every unix socket of every child has a
// peer held by a live process in the namespace (allowing a moment for
// children to drop connections whose peer died).
func checkEdgesConnected(t *testing.T, d *dev) {
	t.Helper()
	var problems []string
	for deadline := time.Now().Add(3 * time.Second); ; {
		problems = danglingSockets(t, d)
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

func danglingSockets(t *testing.T, d *dev) []string {
	t.Helper()
	var problems []string
	peers := unixPeers(t)
	live := map[string]bool{}
	for _, pid := range d.inNS() {
		for _, ino := range socketInodes(pid) {
			live[ino] = true
		}
	}
	tab, _ := printedTable(t)
	want := map[string]int{}
	for _, e := range tab.Edges {
		want[e.Client]++
		want[e.Server]++
	}
	for _, c := range d.status().Children {
		pid := d.hostPid(c.Pid)
		connected := 0
		for _, ino := range socketInodes(pid) {
			if p, ok := peers[ino]; ok && live[p] {
				connected++
			}
		}
		// The control channel plus one per edge, at least (gRPC streams add more).
		if connected < 1+want[c.Name] {
			problems = append(problems, fmt.Sprintf("%s: %d sockets connected to live peers, want ≥ %d (control + %d edges)", c.Name, connected, 1+want[c.Name], want[c.Name]))
		}
	}
	return problems
}

// unixPeers maps the inode of every unix socket on the host to its peer's
// ("0" when the peer is gone), as sock_diag (ss) reports them.
func unixPeers(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command("ss", "-xpn").Output()
	if err != nil {
		t.Skipf("ss: %v", err)
	}
	// ss -x: Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process
	peers := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 8 {
			peers[f[5]] = f[7]
		}
	}
	return peers
}

func queueMentions(state, s string) bool {
	found := false
	filepath.WalkDir(filepath.Join(state, "logfwd"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(s)) {
				found = true
			}
		}
		return nil
	})
	return found
}

func TestOrphanIsReaped(t *testing.T) {
	d := startDev(t)
	// A process in the namespace starts a grandchild and exits: the
	// grandchild is re-parented to PID 1, which must reap it when it ends.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(d.pid1), "-p", "-m", "--", "/bin/sh", "-c", "sleep 1 </dev/null >/dev/null 2>&1 & echo $!").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v\n%s", err, out)
	}
	nsPid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("nsenter printed %q, want the orphan's pid", out)
	}
	// The shell is gone (nsenter waited for it): its child is an orphan,
	// running sleep once its exec is done.
	orphan := 0
	for deadline := time.Now().Add(3 * time.Second); ; {
		if orphan = d.hostPid(nsPid); orphan != 0 && procStatus(orphan)["Name"] == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no orphan sleep with pid %d in the namespace (host pid %d)", nsPid, orphan)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ppid := procStatus(orphan)["PPid"]; ppid != strconv.Itoa(d.pid1) {
		t.Fatalf("orphan's parent is %s, want PID 1 (%d)", ppid, d.pid1)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		s := procStatus(orphan)
		if s == nil {
			return // reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped: state %q", orphan, s["State"])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSupervisorPanicDoesNotKillPID1(t *testing.T) {
	d := startDev(t, "--test-panic-on-sigusr1")
	before := d.status()
	proper := d.hostPid(before.Pid)
	if err := unix.Kill(proper, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	after := d.waitAll(func(s *status) bool {
		return allReady(s) && s.Pid != 0 && d.hostPid(s.Pid) != proper && d.hostPid(s.Pid) != 0
	}, 60*time.Second, "a new supervisor proper with all children ready")
	d.waitLog(30*time.Second, "the panic", "test-only panic")
	if procStatus(d.pid1) == nil {
		t.Fatal("PID 1 died")
	}
	for _, name := range childNames {
		if before.child(name).Pid == after.child(name).Pid && d.hostPid(after.child(name).Pid) == d.hostPid(before.child(name).Pid) {
			// ns pids may repeat; host pids must differ (the children were rebuilt)
			t.Errorf("%s was not rebuilt", name)
		}
	}
}

func TestShutdownLeavesNothing(t *testing.T) {
	d := startDev(t)
	d.stopLeavingNothing()
}

// stopLeavingNothing stops the supervisor with SIGTERM and checks that it
// took at most 5 s and left no process and no cgroup behind.
func (d *dev) stopLeavingNothing() {
	t := d.t
	t.Helper()
	var pids []int
	for _, c := range d.status().Children {
		pids = append(pids, d.hostPid(c.Pid))
	}
	pids = append(pids, d.inNS()...)
	took, err := d.stop(10 * time.Second)
	if err != nil {
		t.Fatalf("exit: %v (after %v)\n", err, took)
	}
	if took > 5*time.Second {
		t.Errorf("shutdown took %v, want ≤ 5 s", took)
	}
	for _, pid := range pids {
		if s := procStatus(pid); s != nil && s["PPid"] != "1" {
			t.Errorf("process %d (%s) left after shutdown", pid, s["Name"])
		}
	}
	// No cgroup left under the supervisor's cgroup root, in any hierarchy.
	h := sha256.Sum256([]byte(d.state))
	dirs, err := sandbox.CgroupDirs("cvmd-" + hex.EncodeToString(h[:6]))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("cgroup dirs: %v %v", dirs, err)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("cgroup %s left after shutdown", dir)
		}
	}
	if !strings.Contains(d.out.String(), "msg=stopped") {
		t.Errorf("PID 1 did not log an orderly stop")
	}
}

// TestDependentsRunAfterReady: with logfwd never READY, every other child
// (all depend on it, directly or not) has its sandbox built but its
// program not executed: the sandbox's process is still libcontainer's init.
// A shutdown then stops those half-started sandboxes like any other.
func TestDependentsRunAfterReady(t *testing.T) {
	d := startDevWith(t, false, "--test-misbehave", "logfwd=silent", "--ready-timeout", "2s")
	d.waitAll(func(s *status) bool {
		for _, name := range childNames[1:] {
			if s.child(name).Status != "created" {
				return false
			}
		}
		// logfwd runs but never says READY.
		return s.child("logfwd").Status == "starting"
	}, 30*time.Second, "every dependent of logfwd created, logfwd starting")
	// Still so once logfwd's READY timeout has come and gone: the loop
	// handled that (and logfwd's restart) without running a dependent.
	for deadline := time.Now().Add(30 * time.Second); !logHas(d.out.String(), `msg="child never said READY; killing it"`, "child=logfwd "); {
		if time.Now().After(deadline) {
			t.Fatal("logfwd's READY timeout never came")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, name := range childNames[1:] {
		c := d.status().child(name)
		if c.Status != "created" || c.Generation != 1 {
			t.Errorf("%s after logfwd's READY timeout: %+v, want still created, generation 1", name, c)
		}
		pid := d.hostPid(c.Pid)
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00"); len(args) < 2 || args[1] != "init" {
			t.Errorf("%s runs %q before logfwd is READY, want libcontainer's init waiting", name, args)
		}
	}
	d.stopLeavingNothing()
	// A created child has no program to stop gracefully: it is killed, and
	// the log says so rather than an exit status that reads like a failure.
	out := d.out.String()
	for _, name := range childNames[1:] {
		if !strings.Contains(out, "child="+name+" generation=1 status=\"signal: killed\"") {
			t.Errorf("%s: no line saying its created sandbox was killed at shutdown", name)
		}
	}
}

func TestPrintSandboxIsStable(t *testing.T) {
	_, h1 := printedTable(t)
	_, h2 := printedTable(t)
	if h1 != h2 || len(h1) != 64 {
		t.Fatalf("hash %q then %q", h1, h2)
	}
}

// TestMeasuredBinaryHasNoTestSwitches: the binary that is measured has no
// way to behave otherwise than its measurement says: no `cvmd probe`, no
// --test-* flag (they exist in the test build only), and the same table.
func TestMeasuredBinaryHasNoTestSwitches(t *testing.T) {
	bin := measuredCvmd(t)
	state := t.TempDir()
	for _, args := range [][]string{
		{"probe", "in", "ready"},
		{"supervise", "--dev", "--state", state, "--test-misbehave", "ingress=crash"},
		{"supervise", "--dev", "--state", state, "--test-panic-on-sigusr1"},
	} {
		// A binary that takes the switch starts a supervisor: bound the wait.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
		out, err := cmd.CombinedOutput()
		running := ctx.Err() != nil
		cancel()
		if err == nil || running {
			t.Errorf("cvmd %v: accepted by the measured binary:\n%s", args, out)
			continue
		}
		if !strings.Contains(string(out), "unknown command") && !strings.Contains(string(out), "flag provided but not defined") {
			t.Errorf("cvmd %v: refused, but not as unknown (%v):\n%s", args, err, out)
		}
	}
	if _, h := printedTableOf(t, bin); h != func() string { _, h := printedTable(t); return h }() {
		t.Error("the measured and the test build print different tables")
	}
}
