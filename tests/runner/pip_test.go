package runner_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cvmd/cvmd/children/egress"
	"github.com/cvmd/cvmd/proto/config"
	pb "github.com/cvmd/cvmd/proto/runner"
)

// buildWheel makes a pure-Python wheel of package name with one module
// attribute VALUE = value.
func buildWheel(t *testing.T, name, version string, value int) (string, []byte) {
	t.Helper()
	files := map[string]string{
		name + "/__init__.py":                        fmt.Sprintf("VALUE = %d\n", value),
		name + "-" + version + ".dist-info/METADATA": fmt.Sprintf("Metadata-Version: 2.1\nName: %s\nVersion: %s\n", name, version),
		name + "-" + version + ".dist-info/WHEEL":    "Wheel-Version: 1.0\nGenerator: cvmd-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, n := range []string{name + "/__init__.py", name + "-" + version + ".dist-info/METADATA", name + "-" + version + ".dist-info/WHEEL"} {
		w, _ := zw.Create(n)
		w.Write([]byte(files[n]))
		sum := sha256.Sum256([]byte(files[n]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", n, base64.RawURLEncoding.EncodeToString(sum[:]), len(files[n]))
	}
	rec := name + "-" + version + ".dist-info/RECORD"
	fmt.Fprintf(&record, "%s,,\n", rec)
	w, _ := zw.Create(rec)
	w.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s-%s-py3-none-any.whl", name, version), buf.Bytes()
}

// TestPythonRequirementsThroughEgress: pip installs requirements.txt from a
// PEP 503 index on the host's loopback, reachable from the algorithm
// sandbox only through the egress proxy (the real egress.Proxy serving the
// listener the supervisor made inside the sandbox's namespace).
func TestPythonRequirementsThroughEgress(t *testing.T) {
	wheelName, wheel := buildWheel(t, "cvmdtestpkg", "1.0", 42)
	sum := sha256.Sum256(wheel)
	var hits atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/simple/cvmdtestpkg/", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprintf(w, "<!DOCTYPE html><html><body><a href=\"/files/%s#sha256=%s\">%s</a></body></html>\n", wheelName, hex.EncodeToString(sum[:]), wheelName)
	})
	mux.HandleFunc("/files/"+wheelName, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(wheel)
	})
	// 127.0.0.2: outside the sandbox's NO_PROXY (localhost, 127.0.0.1), so
	// pip goes through the proxy; the egress allowlist names it explicitly.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on loopback: %v", err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	index := ln.Addr().String()

	allow, err := egress.ParseAllowlist([]string{index})
	if err != nil {
		t.Fatal(err)
	}
	var decisions records
	proxy := egress.New(egress.Config{Allow: allow, Log: slog.New(&decisions)})
	ctx, cancel := context.WithCancel(context.Background())
	var serving sync.WaitGroup
	defer func() { cancel(); serving.Wait() }()
	w := newWorld(t, worldOpts{
		settings: &config.RunnerSettings{PipIndexUrl: "http://" + index + "/simple", PipTrustedHost: "127.0.0.2"},
		proxy: func(edge string, f *os.File) error {
			l, err := net.FileListener(f)
			f.Close()
			if err != nil {
				return err
			}
			serving.Go(func() { proxy.Serve(ctx, l, strings.TrimPrefix(edge, "proxy:")) })
			return nil
		},
	})
	w.put(t, "algo", []byte("import cvmdtestpkg\nprint('value', cvmdtestpkg.VALUE)\nopen('results/value.txt','w').write(str(cvmdtestpkg.VALUE))\n"), 0o644)
	w.put(t, "requirements.txt", []byte("cvmdtestpkg==1.0\n"), 0o644)
	resp, err := w.svc.Run(context.Background(), &pb.RunRequest{ComputationId: "c-pip", AlgoType: "python", AlgorithmPath: "algo", RequirementsPath: "requirements.txt"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetError() != "" {
		t.Fatalf("run failed: %s\nlogs:\n%s\negress:\n%s", resp.GetError(), w.rec.all(), decisions.all())
	}
	if got := w.result(t, "value.txt"); got != "42" {
		t.Errorf("value.txt = %q, want 42", got)
	}
	// The sandboxes are gone: the supervisor shut their listeners down, so
	// egress's Serve on each returned without being cancelled.
	served := make(chan struct{})
	go func() { serving.Wait(); close(served) }()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Errorf("egress still serves the listeners of ended sandboxes")
	}
	if hits.Load() < 2 {
		t.Errorf("the index saw %d requests, want the page and the wheel", hits.Load())
	}
	t.Logf("egress:\n%s", decisions.all())
}

// TestPythonRequirementsOfflineWheelDir: with --no-index and a wheel dir,
// pip installs without any network.
func TestPythonRequirementsOfflineWheelDir(t *testing.T) {
	wheelName, wheel := buildWheel(t, "cvmdofflinepkg", "2.0", 7)
	w := newWorld(t, worldOpts{settings: &config.RunnerSettings{PipFindLinks: "work/wheels", PipNoIndex: true}})
	os.MkdirAll(w.work+"/wheels", 0o755)
	if err := os.WriteFile(w.work+"/wheels/"+wheelName, wheel, 0o644); err != nil {
		t.Fatal(err)
	}
	w.put(t, "algo", []byte("import cvmdofflinepkg\nopen('results/value.txt','w').write(str(cvmdofflinepkg.VALUE))\n"), 0o644)
	w.put(t, "requirements.txt", []byte("cvmdofflinepkg==2.0\n"), 0o644)
	resp, err := w.svc.Run(context.Background(), &pb.RunRequest{ComputationId: "c-wheels", AlgoType: "python", AlgorithmPath: "algo", RequirementsPath: "requirements.txt"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetError() != "" {
		t.Fatalf("run failed: %s\nlogs:\n%s", resp.GetError(), w.rec.all())
	}
	if got := w.result(t, "value.txt"); got != "7" {
		t.Errorf("value.txt = %q, want 7", got)
	}
}
