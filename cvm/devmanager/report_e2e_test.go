package devmanager_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
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

	"google.golang.org/grpc/credentials"

	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/cvm/devmanager"
)

// TestE2EManagerMTLSAttestationReport: with an mTLS manager link, the first
// control message of the guest is an attestation report bound to its client
// certificate (report data SHA-512 and vTPM nonce SHA-256 of the PEM file,
// as Cocos's guest binds it) carrying the certificate's serial; the token
// verifies with those bindings and is refused for another certificate.
func TestE2EManagerMTLSAttestationReport(t *testing.T) {
	g := newGuest(t)
	dir := t.TempDir()
	caFile, srvCert, srvKey := writeTLSFiles(t, dir)
	cliCert, cliKey, serial := writeClientCert(t, dir, caFile)

	// The manager requires a client certificate signed by the same CA.
	caPEM, _ := os.ReadFile(caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	ln, err := net.Listen("tcp", g.mgrAddr)
	if err != nil {
		t.Fatal(err)
	}
	srv := devmanager.New(devmanager.Options{ChunkSize: 64 << 10})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { devmanager.Serve(ctx, ln, srv, creds); close(served) }()
	t.Cleanup(func() { cancel(); <-served })

	g.startCvmdEnv("AGENT_CVM_GRPC_SERVER_CA_CERTS=" + caFile + "\nAGENT_CVM_GRPC_CLIENT_CERT=" + cliCert + "\nAGENT_CVM_GRPC_CLIENT_KEY=" + cliKey + "\n")

	wctx, wcancel := context.WithTimeout(g.ctx, 90*time.Second)
	defer wcancel()
	if err := srv.Wait(wctx, has(func(m devmanager.Received) bool { return m.Msg.GetVTPMattestationReport() != nil })); err != nil {
		t.Fatal("no attestation report from the guest")
	}
	var file []byte
	var gotSerial string
	for _, m := range srv.Messages() {
		if r := m.Msg.GetVTPMattestationReport(); r != nil {
			file, gotSerial = r.GetFile(), r.GetCertSerialNumber()
			break
		}
	}
	if gotSerial != serial.String() {
		t.Errorf("report carries serial %q, want %s", gotSerial, serial)
	}
	if len(file) == 0 {
		t.Fatal("attestation report is empty despite a client certificate")
	}
	certPEM, _ := os.ReadFile(cliCert)
	rd := sha512.Sum512(certPEM)
	nonce := sha256.Sum256(certPEM)
	res, err := verify.Token(file, verify.Options{ReportData: rd[:], Nonce: nonce[:], AllowSimulated: true})
	if err != nil {
		t.Fatalf("report does not verify bound to the client certificate: %v", err)
	}
	if !res.Simulated {
		t.Error("a report from the simulated platform is not marked simulated")
	}
	other := sha512.Sum512([]byte("another certificate"))
	if _, err := verify.Token(file, verify.Options{ReportData: other[:], Nonce: nonce[:], AllowSimulated: true}); err == nil {
		t.Error("report verified against another certificate's binding")
	}
}

// writeClientCert makes a client certificate signed by a CA of its own,
// which it appends to caFile: the manager (ClientCAs) and the guest (its
// server CA file) trust that file, so both chains verify.
func writeClientCert(t *testing.T, dir, caFile string) (certFile, keyFile string, serial *big.Int) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caT := &x509.Certificate{SerialNumber: big.NewInt(10), Subject: pkix.Name{CommonName: "e2e-client-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caT, caT, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	f, err := os.OpenFile(caFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	f.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial = big.NewInt(424242)
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "cvm-guest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile, serial
}
