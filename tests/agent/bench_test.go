package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/cocos/digest"
)

// ramDir returns a temp dir on /dev/shm (tmpfs) when there is one, removed
// at cleanup: the CVM keeps the computation in RAM (its root is a tmpfs).
func ramDir(t *testing.T) string {
	d, err := os.MkdirTemp("/dev/shm", "cvmd-bench-*")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// tlsIdentity makes a self-signed ECDSA P-256 certificate for 127.0.0.1 and
// returns the file holding it (the CLI's CA) and the certificate and key as
// PEM (what the ingress settings take).
func tlsIdentity(t *testing.T, dir string) (caFile, certPEM, keyPEM string) {
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
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, []byte(certPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, certPEM, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}

// sha3Rate hashes 256 MiB on one locked OS thread and returns MiB per
// second of that thread's CPU time (the pull benchmarks' reference).
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
