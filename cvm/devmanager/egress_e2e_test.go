package devmanager_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cvmd/cvmd/cvm/devmanager"
)

// startCvmdEnv is startCvmd with extra lines in the Cocos environment file.
func (g *guest) startCvmdEnv(extra string) { g.startCvmdArgs(extra, "--attestation", "simulated") }

// startCvmdArgs is startCvmdEnv with cvmd's flags after the common ones.
func (g *guest) startCvmdArgs(extra string, args ...string) {
	t := g.t
	env := filepath.Join(g.work, "environment")
	os.WriteFile(env, []byte("AGENT_CVM_GRPC_URL="+g.mgrAddr+"\nAGENT_CVM_ID=e2e\n"+extra), 0o600)
	sup := exec.Command(filepath.Join(g.bin, g.cvmdName), append([]string{"supervise", "--dev", "--state", filepath.Join(g.work, "state"),
		"--listen", g.agentAddr, "--env", env}, args...)...)
	logf, _ := os.Create(filepath.Join(g.work, "supervisor.log"))
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	g.cvmdPid = sup.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- sup.Wait() }()
	t.Cleanup(func() {
		defer logf.Close()
		sup.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			sup.Process.Kill()
			<-exited
			t.Error("cvmd did not stop within 20 s of SIGTERM")
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(g.work, "supervisor.log"))
			t.Logf("supervisor log:\n%s", tail(string(b), 6000))
		}
	})
}

// loopbackServer serves "hello <name>" on 127.0.0.1 and returns its port.
func loopbackServer(t *testing.T, name string) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello %s\n", name) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestE2EEgressAllowlistFromEnvironment: COCOS_EGRESS_ALLOWLIST in the Cocos
// environment file reaches the egress. A real algorithm in its sandbox
// fetches through its proxy: a loopback server allowed by IP answers, one
// allowed by a name in /etc/hosts answers too (the egress's sandbox sees
// the host's /etc/hosts and /etc/resolv.conf), and a loopback server not in
// the list is refused by the proxy.
func TestE2EEgressAllowlistFromEnvironment(t *testing.T) {
	g := newGuest(t)
	allowed, named, denied := loopbackServer(t, "allowed"), loopbackServer(t, "named"), loopbackServer(t, "denied")
	hostsName := ""
	if b, err := os.ReadFile("/etc/hosts"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "127.0.0.1" && !strings.HasPrefix(f[0], "#") {
				for _, n := range f[1:] {
					if n != "localhost" && !strings.Contains(n, "localhost") {
						hostsName = n
					}
				}
			}
		}
	}
	urls := []string{fmt.Sprintf("http://127.0.0.1:%d/", allowed), fmt.Sprintf("http://127.0.0.1:%d/", denied)}
	allow := fmt.Sprintf("127.0.0.1:%d, 127.0.0.1:%d", allowed, named)
	if hostsName != "" {
		urls = append(urls, fmt.Sprintf("http://%s:%d/", hostsName, named))
		allow += fmt.Sprintf(" %s:%d", hostsName, named)
	} else {
		t.Log("no name for 127.0.0.1 in /etc/hosts besides localhost: name resolution not tested")
	}
	b := exec.Command("go", "build", "-trimpath", "-o", g.algo, "./cvm/devmanager/testdata/egressalgo")
	b.Dir, b.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("building the egress algorithm: %v\n%s", err, out)
	}
	var err error
	g.req, err = devmanager.Spec{ID: "e2e-1", Name: "egress", Algorithm: g.algo, AlgoType: "bin", AlgoArgs: urls,
		Datasets: []string{g.data}, PublicKey: filepath.Join(g.work, "public.pem")}.Build()
	if err != nil {
		t.Fatal(err)
	}
	srv := g.startManager(true)
	g.startCvmdEnv(`COCOS_EGRESS_ALLOWLIST="` + allow + `"` + "\n")
	g.waitRunRes(srv)
	g.retry("algo", g.algo, g.priv, "-a", "bin")
	g.retry("data", g.data, g.priv)
	res := g.result()
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(res), "\n") {
		u, rest, _ := strings.Cut(l, " ")
		lines[u] = rest
	}
	want := map[string]string{urls[0]: "200 hello allowed"}
	if hostsName != "" {
		want[urls[2]] = "200 hello named"
	}
	for u, w := range want {
		if lines[u] != w {
			t.Errorf("%s: got %q, want %q (result:\n%s)", u, lines[u], w, res)
		}
	}
	if r := lines[urls[1]]; strings.HasPrefix(r, "200") || r == "" {
		t.Errorf("%s (not in the allowlist): got %q, want a refusal", urls[1], r)
	}
}
