package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/internal/testutil"
)

// TestBenchAgentTransfer measures, in one run: one core's SHA3-256 rate
// (the ceiling of a hashed upload), a 1 GiB dataset upload CLI → agent
// process → disk with hash check over a socketpair edge, the agent's peak
// RSS during it, and a 1 GiB results download.
func TestBenchAgentTransfer(t *testing.T) {
	testutil.BenchOn(t)
	const size = 1 << 30
	// One core's SHA3-256 rate over 256 MiB in memory, from the thread's
	// CPU time: the rate a core gives when it is not shared (this machine's
	// two cores are shared by every build and test running alongside).
	sha3 := sha3Rate()
	testutil.Bench("sha3_limit_mib_s", sha3, "MiB/s")

	// The algorithm writes a 1 GiB result.
	script := fmt.Sprintf("#!/bin/sh\nhead -c %d /dev/zero > results/big.bin\n", size)
	// The CVM keeps the computation in RAM (its root is a tmpfs), and this
	// dev VM's ext4 writes back at ~100 MiB/s: measure the agent on tmpfs.
	state, dir := ramDir(t), ramDir(t)
	p := startProc(t, state)
	w := &world{dir: dir}
	w.setup(t, script)
	// Dataset b is 1 GiB.
	f, err := os.Create(w.dsB)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	for i := 0; i < size/len(chunk); i++ {
		f.Write(chunk)
	}
	f.Close()
	os.Remove(w.dsA)
	if err := os.Link(w.dsB, w.dsA); err != nil { // the same GiB under a's name
		t.Fatal(err)
	}
	w.dial, w.control, w.compDir = p.Dial, p.Control, filepath.Join(state, "computation")
	w.start(t)
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)

	// Dataset a: the DESIGN path, CLI → ingress (TLS, in this process) → agent.
	tlsAddr, caFile := startTLSIngress(t, p.Dial, w.dir)
	w.tcpAddr = tlsAddr
	start := time.Now()
	w.mustCVM(t, true, "--server-ca", caFile, "data", w.dsA, w.dataA.KeyFile)
	testutil.Bench("upload_tls_ingress_mib_s", float64(size>>20)/time.Since(start).Seconds(), "MiB/s")
	os.Remove(w.dsA)
	cpu0 := p.cpuSeconds(t)
	start = time.Now()
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	up := float64(size>>20) / time.Since(start).Seconds()
	// CPU the agent spent per MiB, against what SHA3 alone costs: a figure
	// that holds when other work shares the cores.
	cpu := (p.cpuSeconds(t) - cpu0) * 1000 / float64(size>>20)
	testutil.Bench("agent_upload_cpu_ms_per_mib", cpu, "ms/MiB")
	testutil.Bench("sha3_cpu_ms_per_mib", 1000/sha3, "ms/MiB")
	testutil.Bench("agent_upload_hash_share_pct", 100*(1000/sha3)/cpu, "%")
	rss := p.peakRSSMiB(t)
	testutil.Bench("upload_mib_s", up, "MiB/s")
	testutil.Bench("upload_of_sha3_limit_pct", 100*up/sha3, "%")
	testutil.Bench("agent_peak_rss_mib", rss, "MiB")
	os.Remove(w.dsB)
	w.waitState(t, "ConsumingResults")
	start = time.Now()
	w.mustCVM(t, false, "result", w.cons1.KeyFile, "-o", w.dir)
	st, err := os.Stat(filepath.Join(w.dir, "results.zip"))
	if err != nil || st.Size() < size {
		t.Fatalf("results: %v %v", st, err)
	}
	testutil.Bench("result_mib_s", float64(st.Size()>>20)/time.Since(start).Seconds(), "MiB/s")
	testutil.Bench("agent_peak_rss_after_result_mib", p.peakRSSMiB(t), "MiB")
}

// ramDir returns a temp dir on /dev/shm (tmpfs) when there is one, removed
// at cleanup.
func ramDir(t *testing.T) string {
	d, err := os.MkdirTemp("/dev/shm", "cvmd-bench-*")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startTLSIngress runs the ingress server with a fresh self-signed
// certificate for 127.0.0.1 in front of dial, and returns its address and
// the certificate file (the CLI's CA).
func startTLSIngress(t *testing.T, dial func(context.Context) (net.Conn, error), dir string) (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agent"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ingress.New(ingress.Config{
		TLS:     &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12},
		Backend: dial,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), caFile
}

// sha3Rate hashes 256 MiB on one locked OS thread and returns MiB per
// second of that thread's CPU time.
func sha3Rate() float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 1<<20)
	h := digest.New()
	var r0, r1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &r0)
	for i := 0; i < 256; i++ {
		h.Write(buf)
	}
	unix.Getrusage(unix.RUSAGE_THREAD, &r1)
	cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
	return 256 / cpu.Seconds()
}
