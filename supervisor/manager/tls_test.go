package manager

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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

	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/internal/testutil"
)

type pki struct {
	dir                       string
	caPEM, srvCert, srvKey    []byte
	cliCert, cliKey           []byte
	cliSerial                 *big.Int
	caFile, cliCertF, cliKeyF string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	leaf := func(serial int64, server bool) ([]byte, []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tm := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		if server {
			tm.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			tm.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		} else {
			tm.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tm, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
	}
	p.srvCert, p.srvKey = leaf(2, true)
	p.cliSerial = big.NewInt(987654321)
	p.cliCert, p.cliKey = leaf(p.cliSerial.Int64(), false)
	p.caFile, p.cliCertF, p.cliKeyF = filepath.Join(p.dir, "ca.pem"), filepath.Join(p.dir, "cert.pem"), filepath.Join(p.dir, "key.pem")
	os.WriteFile(p.caFile, p.caPEM, 0o600)
	os.WriteFile(p.cliCertF, p.cliCert, 0o600)
	os.WriteFile(p.cliKeyF, p.cliKey, 0o600)
	return p
}

func (p *pki) serverCreds(t *testing.T, requireClient bool) credentials.TransportCredentials {
	cert, err := tls.X509KeyPair(p.srvCert, p.srvKey)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}}
	if requireClient {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(p.caPEM)
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(tc)
}

func TestLinkTLSAndMTLS(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name       string
		requireCli bool
		cfg        Config
		wantReport bool
	}{
		{"TLS", false, Config{ServerCAFile: p.caFile}, false},
		{"mTLS with a report bound to the client certificate", true, Config{ServerCAFile: p.caFile, ClientCertFile: p.cliCertF, ClientKeyFile: p.cliKeyF}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := devmanager.New(devmanager.Options{Computation: sampleReq(t, "c1")})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { devmanager.Serve(ctx, ln, srv, p.serverCreds(t, tc.requireCli)); close(done) }()
			t.Cleanup(func() { cancel(); <-done })
			cfg := tc.cfg
			cfg.URL = ln.Addr().String()
			var bound []byte
			attest := func(_ context.Context, certPEM []byte) ([]byte, error) {
				sum := sha512.Sum512(certPEM)
				bound = sum[:]
				return append([]byte("token:"), sum[:8]...), nil
			}
			startLink(t, cfg, Deps{Supervisor: &testSupervisor{}, Attest: attest})
			wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer wcancel()
			if err := srv.Wait(wctx, func(ms []devmanager.Received) bool {
				for _, m := range ms {
					if m.Msg.GetRunRes() != nil {
						return true
					}
				}
				return false
			}); err != nil {
				t.Fatal("no run response over TLS")
			}
			rep := srv.Messages()[0].Msg.GetVTPMattestationReport()
			if rep == nil {
				t.Fatalf("first message %v, want the attestation report", srv.Messages()[0].Msg)
			}
			if !tc.wantReport {
				if len(rep.GetFile()) != 0 || rep.GetCertSerialNumber() != "" {
					t.Fatalf("report %v, want empty without a client certificate", rep)
				}
				return
			}
			want := sha512.Sum512(p.cliCert)
			if string(bound) != string(want[:]) || string(rep.GetFile()) != "token:"+string(want[:8]) || rep.GetCertSerialNumber() != p.cliSerial.String() {
				t.Fatalf("report %v not bound to the client certificate (serial %s)", rep, p.cliSerial)
			}
		})
	}
}

func TestLinkRefusesBadTLSConfig(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"client cert without server CA", Config{URL: "127.0.0.1:1", ClientCertFile: p.cliCertF, ClientKeyFile: p.cliKeyF}},
		{"CA file missing", Config{URL: "127.0.0.1:1", ServerCAFile: filepath.Join(p.dir, "none.pem")}},
		{"CA file not PEM", Config{URL: "127.0.0.1:1", ServerCAFile: p.cliKeyF + ".x"}},
		{"key does not match", Config{URL: "127.0.0.1:1", ServerCAFile: p.caFile, ClientCertFile: p.cliCertF, ClientKeyFile: p.caFile}},
	}
	os.WriteFile(p.cliKeyF+".x", []byte("not pem"), 0o600)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg, Deps{Supervisor: &testSupervisor{}}); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
