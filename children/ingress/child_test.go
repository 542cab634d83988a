package ingress

import (
	"bytes"
	"context"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/attest/atlsverify"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	attpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
)

// TestMain turns the test binary into `cvmd ingress` when asked, so the
// child tests run the real Main under the real child runtime.
func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Helpers{"ingress": func() int { return testutil.ExitCode(child.Run("ingress", Main)) }})
}

// simAttestation is a real attestation gRPC service (proto/attestation) over
// the simulated SNP+vTPM platform, served on an ipc edge.
type simAttestation struct {
	attpb.UnimplementedAttestationServer
	a *attest.Attester
}

func (s *simAttestation) Evidence(_ context.Context, r *attpb.EvidenceRequest) (*attpb.EvidenceResponse, error) {
	tok, err := s.a.Attest(attest.Request{ReportData: r.GetReportData(), Nonce: r.GetNonce(), Platform: attest.Platform(r.GetPlatformType())})
	if err != nil {
		return nil, err
	}
	return &attpb.EvidenceResponse{EatToken: tok, Platform: s.a.Describe(attest.Platform(r.GetPlatformType()))}, nil
}

// serveEdge serves gs on a new edge and returns the client end to pass on.
func serveEdge(t *testing.T, name string, register func(*grpc.Server)) *os.File {
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, name)
	if err != nil {
		t.Fatal(err)
	}
	l := ipc.NewListener(name)
	l.Add(srv)
	gs := grpc.NewServer()
	register(gs)
	done := make(chan struct{})
	go func() { gs.Serve(l); close(done) }()
	t.Cleanup(func() { gs.Stop(); l.Close(); <-done; cli.Close() })
	return cli
}

// runChild starts the test binary as the ingress child with the given fds
// and settings and waits for READY.
func runChild(t *testing.T, generation uint32, settings *config.IngressSettings, fds map[string]*os.File) (stop func()) {
	t.Helper()
	mine, theirs, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	ctl := ipc.NewControl(mine)
	any, _ := anypb.New(settings)
	cfg := &control.ChildConfig{Version: child.ConfigVersion, Name: "ingress", ComputationId: "c1", LogLevel: "debug", Fds: map[string]int32{}, Settings: any, Generation: generation}
	cmd := testutil.HelperCommand("ingress")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.ExtraFiles = []*os.File{theirs}
	for name, f := range fds {
		cfg.Fds[name] = int32(3 + len(cmd.ExtraFiles))
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	if err := ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: cfg}}}, nil); err != nil {
		t.Fatal(err)
	}
	msg, _, err := ctl.Recv()
	if err != nil || msg.GetReady() == nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not say READY: %v %v\n%s", msg, err, stderr.String())
	}
	return func() {
		ctl.Send(&control.Message{Body: &control.Message_Stop{Stop: &control.Stop{Reason: "computation ended"}}}, nil)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("child exit: %v\n%s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("child did not stop\n%s", stderr.String())
		}
		ctl.Close()
		if testing.Verbose() {
			t.Logf("child log:\n%s", stderr.String())
		}
	}
}

// TestChildAcrossComputations runs the real ingress child twice on one
// listening socket, as the supervisor does for two computations: first
// aTLS with simulator-backed evidence from a real attestation service,
// verified by attest/verify; then TLS.
func TestChildAcrossComputations(t *testing.T) {
	backend := serveEdge(t, "agent", func(gs *grpc.Server) {
		hs := newHealth()
		healthpb.RegisterHealthServer(gs, hs)
	})
	s, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := attest.NewTPM(rw)
	if err != nil {
		rw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close(); rw.Close() })
	att := serveEdge(t, "attestation", func(gs *grpc.Server) {
		attpb.RegisterAttestationServer(gs, &simAttestation{a: &attest.Attester{TPM: tp, SNP: s, Simulated: true}})
	})
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	listen, _ := tcpLn.(*net.TCPListener).File()
	defer listen.Close()
	addr := tcpLn.Addr().String()

	ca := newPKI(t, "ca")
	cert, key := ca.issue(t, "cvm", false)
	runs := []struct {
		name     string
		settings *config.IngressSettings
		creds    grpc.DialOption
	}{
		{"computation 1: aTLS, simulated SNP+vTPM", &config.IngressSettings{AttestedTls: true, PlatformType: int32(attest.SNPvTPM)},
			grpc.WithTransportCredentials(atls.NewCredentials(&atls.ClientConfig{VerifyEvidence: atlsverify.Policy(verify.Options{AllowSimulated: true})}))},
		{"computation 2: TLS", &config.IngressSettings{CertFile: string(cert), KeyFile: string(key)}, tlsCreds(t, ca, nil, nil)},
	}
	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			fds := map[string]*os.File{"listen": listen, "to:agent": backend}
			if r.settings.GetAttestedTls() {
				fds["to:attestation"] = att
			}
			stop := runChild(t, uint32(i+1), proto.Clone(r.settings).(*config.IngressSettings), fds)
			defer stop()
			cc, err := grpc.NewClient(addr, r.creds)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
