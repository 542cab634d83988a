package ingress

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha3"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"crypto/rand"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/attest/atls/atlstest"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/config"
)

type modeCase struct {
	name     string
	settings *config.IngressSettings
	mode     string
	client   func(t *testing.T) []grpc.DialOption
}

func modeCases(t *testing.T, signer *atlstest.Signer) []modeCase {
	ca := newPKI(t, "server-ca")
	users := newPKI(t, "client-ca")
	srvCert, srvKey := ca.issue(t, "cvm", false)
	cliCert, cliKey := users.issue(t, "user", true)
	dir := t.TempDir()
	certPath := filepath.Join(dir, "cert.pem")
	os.WriteFile(certPath, srvCert, 0o600)
	atlsClient := func(tc *tls.Config) func(t *testing.T) []grpc.DialOption {
		return func(t *testing.T) []grpc.DialOption {
			cfg := &atls.ClientConfig{TLS: tc, VerifyEvidence: signer.Verifier()}
			return []grpc.DialOption{plainCreds, grpc.WithContextDialer(cfg.Dialer())}
		}
	}
	clientPair, _ := tls.X509KeyPair(cliCert, cliKey)
	return []modeCase{
		{"plaintext", &config.IngressSettings{}, "without TLS",
			func(t *testing.T) []grpc.DialOption { return []grpc.DialOption{plainCreds} }},
		{"TLS (cert by path, key inline)", &config.IngressSettings{CertFile: certPath, KeyFile: string(srvKey)}, "with TLS",
			func(t *testing.T) []grpc.DialOption { return []grpc.DialOption{tlsCreds(t, ca, nil, nil)} }},
		{"mTLS", &config.IngressSettings{CertFile: string(srvCert), KeyFile: string(srvKey), ClientCaFile: string(users.caPEM)}, "with mTLS",
			func(t *testing.T) []grpc.DialOption { return []grpc.DialOption{tlsCreds(t, ca, cliCert, cliKey)} }},
		{"aTLS (ephemeral certificate)", &config.IngressSettings{AttestedTls: true}, "with aTLS",
			atlsClient(nil)},
		{"aTLS with configured certificate and CA check", &config.IngressSettings{AttestedTls: true, CertFile: string(srvCert), KeyFile: string(srvKey)}, "with aTLS",
			atlsClient(&tls.Config{RootCAs: ca.pool(), ServerName: "localhost"})},
		{"aTLS through gRPC transport credentials (the cvm CLI's way)", &config.IngressSettings{AttestedTls: true}, "with aTLS",
			func(t *testing.T) []grpc.DialOption {
				return []grpc.DialOption{grpc.WithTransportCredentials(atls.NewCredentials(&atls.ClientConfig{VerifyEvidence: signer.Verifier()}))}
			}},
		{"maTLS", &config.IngressSettings{AttestedTls: true, ClientCaFile: string(users.caPEM)}, "with maTLS",
			atlsClient(&tls.Config{Certificates: []tls.Certificate{clientPair}})},
	}
}

// TestModes drives every mode end to end with a real gRPC client: health
// check and a 3 MiB Data upload hashed on the far side of an ipc edge.
func TestModes(t *testing.T) {
	signer := atlstest.NewSigner()
	backend := startBackend(t)
	data := bytes.Repeat([]byte("cvmd ingress "), 1<<17)
	want := sha3.Sum256(append(append(append([]byte{}, data...), data...), data[:len(data)/2]...))
	for _, tc := range modeCases(t, signer) {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ConfigFromSettings(tc.settings, signer.Evidence)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Mode() != tc.mode {
				t.Fatalf("mode %q, want %q", cfg.Mode(), tc.mode)
			}
			cfg.Backend = backend
			addr := startIngress(t, *cfg)
			cc, err := grpc.NewClient(addr, append(grpcOptions(), tc.client(t)...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"})
			if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health: %v %v", res, err)
			}
			got, err := upload(ctx, cc, data, int64(len(data))*5/2)
			if err != nil {
				t.Fatal(err)
			}
			if got != hex.EncodeToString(want[:]) {
				t.Fatalf("digest %s, want %x", got, want)
			}
		})
	}
}

func TestWrongClientCertificateRefused(t *testing.T) {
	testutil.CheckLeaks(t)
	backend := startBackend(t)
	ca, users, strangers := newPKI(t, "server-ca"), newPKI(t, "client-ca"), newPKI(t, "other-ca")
	srvCert, srvKey := ca.issue(t, "cvm", false)
	cfg, err := ConfigFromSettings(&config.IngressSettings{CertFile: string(srvCert), KeyFile: string(srvKey), ClientCaFile: string(users.caPEM)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Backend = backend
	addr := startIngress(t, *cfg)
	goodCert, goodKey := users.issue(t, "user", true)
	badCert, badKey := strangers.issue(t, "mallory", true)
	for _, tc := range []struct {
		name       string
		cert, key  []byte
		wantServed bool
	}{
		{"certificate from another CA", badCert, badKey, false},
		{"no certificate", nil, nil, false},
		{"certificate from the client CA", goodCert, goodKey, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient(addr, tlsCreds(t, ca, tc.cert, tc.key))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"})
			if (err == nil) != tc.wantServed {
				t.Fatalf("served = %v (err %v), want %v", err == nil, err, tc.wantServed)
			}
		})
	}
}

// TestRestartAcrossComputations serves two computations in turn on the same
// listening socket (the supervisor hands each run a dup of it).
func TestRestartAcrossComputations(t *testing.T) {
	testutil.CheckLeaks(t)
	backend := startBackend(t)
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	ca := newPKI(t, "ca")
	for i := range 2 {
		cert, key := ca.issue(t, "cvm", false)
		cfg, err := ConfigFromSettings(&config.IngressSettings{CertFile: string(cert), KeyFile: string(key)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Backend = backend
		f, err := tcpLn.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- New(*cfg).Run(ctx, ln) }()
		cc, err := grpc.NewClient(tcpLn.Addr().String(), tlsCreds(t, ca, nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = healthpb.NewHealthClient(cc).Check(cctx, &healthpb.HealthCheckRequest{Service: "agent"})
		ccancel()
		if err != nil {
			t.Fatalf("computation %d: %v", i+1, err)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("computation %d: Run: %v", i+1, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("computation %d: Run did not return after stop", i+1)
		}
		cc.Close()
	}
}

// TestIdleConnectionsDoNotStarve holds 1000 connections that never say a
// word and checks that a real client is still served promptly.
func TestIdleConnectionsDoNotStarve(t *testing.T) {
	testutil.CheckLeaks(t)
	backend := startBackend(t)
	ca := newPKI(t, "ca")
	cert, key := ca.issue(t, "cvm", false)
	cfg, _ := ConfigFromSettings(&config.IngressSettings{CertFile: string(cert), KeyFile: string(key)}, nil)
	cfg.Backend = backend
	addr := startIngress(t, *cfg)
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 1000 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(idle), err)
		}
		idle = append(idle, c)
	}
	start := time.Now()
	cc, err := grpc.NewClient(addr, tlsCreds(t, ca, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("real client starved after %v: %v", time.Since(start), err)
	}
	t.Logf("real client served in %v among 1000 idle connections", time.Since(start))
}

// TestMisbehavingClientsDropped: garbage, a slow handshake and an idle
// established connection are each dropped without touching others.
func TestMisbehavingClientsDropped(t *testing.T) {
	testutil.CheckLeaks(t)
	backend := startBackend(t)
	cfg := Config{Backend: backend, HandshakeTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	addr := startIngress(t, cfg)
	closedWithin := func(c net.Conn, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		return !errors.As(err, &ne) || !ne.Timeout() // EOF or reset from the server, not our deadline
	}
	t.Run("not HTTP/2", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if !closedWithin(c, 2*time.Second) {
			t.Fatal("not closed")
		}
	})
	t.Run("silent past the handshake timeout", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		if !closedWithin(c, 2*time.Second) {
			t.Fatal("not closed")
		}
	})
	t.Run("idle after the preface", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		io.WriteString(c, h2Preface)
		if !closedWithin(c, 3*time.Second) {
			t.Fatal("not closed")
		}
	})
	t.Run("a good client meanwhile", func(t *testing.T) {
		cc, _ := grpc.NewClient(addr, plainCreds)
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConfigFromSettings(t *testing.T) {
	ca := newPKI(t, "ca")
	cert, key := ca.issue(t, "cvm", false)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: ca.caCert.SerialNumber, NotAfter: time.Now().Add(time.Hour)}, ca.caCert, &rsaKey.PublicKey, ca.caKey)
	rsaCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rsaDER})
	rsaKeyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	ev := atlstest.NewSigner().Evidence
	tests := []struct {
		name    string
		s       *config.IngressSettings
		ev      atls.EvidenceFunc
		wantErr string
	}{
		{"cert without key", &config.IngressSettings{CertFile: string(cert)}, nil, "cert_file and key_file"},
		{"client CA without TLS", &config.IngressSettings{ClientCaFile: string(ca.caPEM)}, nil, "client_ca_file needs"},
		{"missing cert file", &config.IngressSettings{CertFile: "/nonexistent/cert.pem", KeyFile: string(key)}, nil, "cert_file"},
		{"client CA not PEM", &config.IngressSettings{CertFile: string(cert), KeyFile: string(key), ClientCaFile: strings.Repeat("x", 1000)}, nil, "client_ca_file holds no PEM"},
		{"server CA not PEM", &config.IngressSettings{ServerCaFile: strings.Repeat("y\n", 600)}, nil, "server_ca_file"},
		{"aTLS without evidence", &config.IngressSettings{AttestedTls: true}, nil, "evidence"},
		{"aTLS with an RSA certificate", &config.IngressSettings{AttestedTls: true, CertFile: string(rsaCert), KeyFile: string(rsaKeyPEM)}, ev, "ECDSA P-256"},
		{"TLS with an RSA certificate is fine", &config.IngressSettings{CertFile: string(rsaCert), KeyFile: string(rsaKeyPEM)}, nil, ""},
		{"plaintext", &config.IngressSettings{}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ConfigFromSettings(tt.s, tt.ev)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// flakyListener fails its first Accepts with EMFILE, as a listener does when
// the process is out of fds.
type flakyListener struct {
	net.Listener
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestAcceptOutOfFDsIsRetried(t *testing.T) {
	testutil.CheckLeaks(t)
	backend := startBackend(t)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(Config{Backend: backend}).Run(ctx, &flakyListener{Listener: tcp, fails: 3}) }()
	cc, _ := grpc.NewClient(tcp.Addr().String(), plainCreds)
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = healthpb.NewHealthClient(cc).Check(hctx, &healthpb.HealthCheckRequest{Service: "agent"})
	hcancel()
	cc.Close()
	cancel()
	if rerr := <-done; rerr != nil {
		t.Fatalf("Run: %v", rerr)
	}
	if err != nil {
		t.Fatalf("served after EMFILE: %v", err)
	}
}
