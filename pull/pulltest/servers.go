package pulltest

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// findBinary looks for a server binary: $envVar, then PATH, then
// $(go env GOPATH)/bin (where scripts/deps.sh puts weed), then /usr/bin.
func findBinary(t testing.TB, envVar, name string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		home, _ := os.UserHomeDir()
		gopath = filepath.Join(home, "go")
	}
	for _, p := range []string{filepath.Join(gopath, "bin", name), "/usr/bin/" + name} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("pulltest: %s not found (set %s or run scripts/deps.sh test)", name, envVar)
	return ""
}

// process runs a server until the test ends; its output goes to a log
// file shown when the test fails.
type process struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{} // closed when the process has ended
	once   sync.Once
}

// stop kills the server's process group and waits for it.
func (p *process) stop() {
	p.once.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
}

func startProcess(t testing.TB, dir, name string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, filepath.Base(name)+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("pulltest: starting %s: %v", name, err)
	}
	lf.Close()
	p := &process{cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		// Its own process group: the server and nothing else.
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s log (tail):\n%s", filepath.Base(name), b)
		}
	})
	return p
}

// waitUp polls url until it answers (any status), the process exits or
// the deadline passes.
func waitUp(client *http.Client, url string, within time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(within)
	for {
		res, err := client.Get(url)
		if err == nil {
			res.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the server exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within %v: %v", url, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitHTTP polls url until it answers (any status) or the deadline passes.
func waitHTTP(t testing.TB, client *http.Client, url string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		res, err := client.Get(url)
		if err == nil {
			res.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pulltest: %s did not answer within %v: %v", url, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// S3 is a running SeaweedFS server with its S3 gateway on loopback.
type S3 struct {
	Endpoint             string // http://127.0.0.1:<port>
	AccessKey, SecretKey string
	Bucket               string // created at start
}

// StartS3 starts `weed server -s3` with one identity (AccessKey/SecretKey)
// and a bucket; every port is a fresh loopback one.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin := findBinary(t, "CVMD_WEED", "weed")
	dir := t.TempDir()
	s := &S3{AccessKey: "cvmdtestaccess", SecretKey: "cvmdtestsecret0123456789", Bucket: "cvmd-pull"}
	cfg := fmt.Sprintf(`{"identities":[{"name":"cvmd-test","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","Write","List","Tagging"]}]}`, s.AccessKey, s.SecretKey)
	if err := os.WriteFile(filepath.Join(dir, "s3.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "data"), 0o700)
	// A port taken between FreePort and the server's bind makes weed exit:
	// start again with new ports (at most three times).
	for attempt := 1; ; attempt++ {
		port := func() string { return fmt.Sprint(FreePort(t)) }
		s3port := port()
		p := startProcess(t, dir, bin, "server", "-dir=data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
			"-master.port="+port(), "-master.port.grpc="+port(), "-volume.port="+port(), "-volume.port.grpc="+port(),
			"-filer.port="+port(), "-filer.port.grpc="+port(), "-s3", "-s3.port="+s3port, "-s3.port.grpc="+port(),
			"-s3.config=s3.json", "-master.volumeSizeLimitMB=1024", "-volume.max=16", "-master.telemetry=false")
		s.Endpoint = "http://127.0.0.1:" + s3port
		if err := waitUp(http.DefaultClient, s.Endpoint+"/", 2*time.Minute, p.exited); err == nil {
			break
		} else if attempt == 3 {
			t.Fatalf("pulltest: SeaweedFS did not come up: %v", err)
		} else {
			t.Logf("pulltest: SeaweedFS attempt %d: %v; again with other ports", attempt, err)
			p.stop()
		}
	}
	return s
}

// Registry is a running distribution registry (Debian's docker-registry)
// with TLS on loopback.
type Registry struct {
	Host    string // 127.0.0.1:<port>
	Client  *http.Client
	Storage string // the registry's storage root (tests tamper with blobs)
}

// StartRegistry starts docker-registry with filesystem storage in a temp
// dir and the CA's server certificate.
func StartRegistry(t testing.TB, ca *CA) *Registry {
	t.Helper()
	bin := findBinary(t, "CVMD_DOCKER_REGISTRY", "docker-registry")
	dir := t.TempDir()
	cert, key := ca.WriteFiles(t, dir)
	port := FreePort(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
  tls:
    certificate: %s
    key: %s
`, filepath.Join(dir, "storage"), port, cert, key)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startProcess(t, dir, bin, "serve", filepath.Join(dir, "config.yml"))
	r := &Registry{Host: fmt.Sprintf("127.0.0.1:%d", port), Storage: filepath.Join(dir, "storage"),
		Client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}}
	waitHTTP(t, r.Client, "https://"+r.Host+"/v2/", 30*time.Second)
	return r
}

// Transport is an HTTP transport trusting the CA, dialing directly (for
// the test's own uploads, not for the agent's fetches).
func (ca *CA) Transport() *http.Transport {
	return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool},
		DialContext: (&net.Dialer{}).DialContext}
}
