// Package pulltest starts the real servers pull-mode tests fetch from, on
// loopback only: an HTTPS file server with its own test CA (and faults on
// demand), SeaweedFS's S3 gateway (`weed server -s3`, built by
// scripts/deps.sh) and Debian's docker-registry (the distribution
// registry) with TLS from the same CA. TEST CODE ONLY: nothing in the guest
// imports it.
//
// Why SeaweedFS for S3: it is a real S3 implementation that runs here
// (built from the Go module proxy, no network at run time), checks SigV4
// signatures against configured identities (so wrong credentials really get
// 403), and supports ranged GETs and ETags, which resumption needs. MinIO's
// server is AGPL and refused here; gofakes3 does not check signatures.
//
// It imports the egress child's proxy (Egress serves it over an ipc edge,
// as the egress child does) and ipc; the layout test exempts it from the
// rule that pull/ never imports children/.
package pulltest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a test certificate authority and a server certificate it issued
// for 127.0.0.1 and localhost.
type CA struct {
	Pool    *x509.CertPool
	PEM     []byte // the CA certificate
	Server  tls.Certificate
	CertPEM []byte // the server certificate and key, for external servers
	KeyPEM  []byte
}

// NewCA makes a fresh CA and server certificate.
func NewCA(t testing.TB) *CA {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cvmd pull test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	ca := &CA{Pool: x509.NewCertPool(), PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	ca.Pool.AddCert(caCert)
	ca.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	ca.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	ca.Server, err = tls.X509KeyPair(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// WriteFiles writes the server certificate and key into dir and returns
// their paths.
func (ca *CA) WriteFiles(t testing.TB, dir string) (cert, key string) {
	t.Helper()
	cert, key = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(cert, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, ca.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
