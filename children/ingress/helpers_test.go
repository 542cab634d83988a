package ingress

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha3"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agent"
)

// sink is a real gRPC AgentService that, like the agent, hashes uploaded
// data with SHA3-256; it returns the digest in the "sha3" trailer.
type sink struct {
	agent.UnimplementedAgentServiceServer
}

func (sink) Data(st grpc.ClientStreamingServer[agent.DataRequest, agent.DataResponse]) error {
	// Headers at once: a client can tell its stream reached the agent.
	if err := st.SendHeader(metadata.Pairs("started", "1")); err != nil {
		return err
	}
	h := sha3.New256()
	for {
		req, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		h.Write(req.GetDataset())
	}
	st.SetTrailer(metadata.Pairs("sha3", hex.EncodeToString(h.Sum(nil))))
	return st.SendAndClose(&agent.DataResponse{})
}

// startBackend serves the sink and grpc.health ("agent" SERVING) over an ipc
// edge, as the agent child does, and returns a dialer for it.
func startBackend(t testing.TB) func(context.Context) (net.Conn, error) {
	t.Helper()
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "agent")
	if err != nil {
		t.Fatal(err)
	}
	l := ipc.NewListener("agent")
	l.Add(srv)
	d := ipc.NewDialer("agent", cli)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(4<<20), grpc.InitialWindowSize(8<<20), grpc.InitialConnWindowSize(16<<20))
	agent.RegisterAgentServiceServer(gs, sink{})
	hs := health.NewServer()
	hs.SetServingStatus("agent", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	done := make(chan struct{})
	go func() { gs.Serve(l); close(done) }()
	t.Cleanup(func() { gs.Stop(); l.Close(); d.Close(); <-done })
	return d.Dial
}

// startIngress runs a Server on a fresh loopback listener until the test ends.
func startIngress(t testing.TB, cfg Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(cfg).Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ln.Addr().String()
}

type pki struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
}

func newPKI(t testing.TB, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &pki{caCert: c, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns PEM cert and key for a leaf (server for localhost, or client).
func (p *pki) issue(t testing.TB, cn string, client bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	return pool
}

func grpcOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(8 << 20), grpc.WithInitialConnWindowSize(16 << 20),
		grpc.WithWriteBufferSize(1 << 20), grpc.WithReadBufferSize(1 << 20),
	}
}

func tlsCreds(t testing.TB, ca *pki, clientCert, clientKey []byte) grpc.DialOption {
	tc := &tls.Config{RootCAs: ca.pool(), ServerName: "localhost"}
	if clientCert != nil {
		c, err := tls.X509KeyPair(clientCert, clientKey)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(tc))
}

var plainCreds = grpc.WithTransportCredentials(insecure.NewCredentials())

// upload sends data through the Data RPC in 1 MiB chunks and returns the
// sink's SHA3-256 hex digest.
func upload(ctx context.Context, cc *grpc.ClientConn, data []byte, total int64) (string, error) {
	st, err := agent.NewAgentServiceClient(cc).Data(ctx)
	if err != nil {
		return "", err
	}
	for sent := int64(0); sent < total; {
		n := min(int64(len(data)), total-sent)
		if err := st.Send(&agent.DataRequest{Dataset: data[:n], Filename: "d"}); err != nil {
			return "", err
		}
		sent += n
	}
	if _, err := st.CloseAndRecv(); err != nil {
		return "", err
	}
	v := st.Trailer().Get("sha3")
	if len(v) != 1 {
		return "", io.ErrUnexpectedEOF
	}
	return v[0], nil
}

func newHealth() *health.Server {
	hs := health.NewServer()
	hs.SetServingStatus("agent", healthpb.HealthCheckResponse_SERVING)
	return hs
}
