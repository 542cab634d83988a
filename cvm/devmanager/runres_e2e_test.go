package devmanager_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/cvm/devmanager"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/cvms"
)

// runAnswerBound is how long a test waits for a RunResponse: the start
// timeout it gives cvmd plus room for a loaded machine.
const runAnswerBound = 45 * time.Second

// fresh is g with its own test, work directory and ports: another cvmd and
// manager, the same algorithm and keys.
func (g *guest) fresh(t *testing.T) *guest {
	h := *g
	h.t, h.work, h.agentAddr, h.mgrAddr, h.managers = t, t.TempDir(), freePort(t), freePort(t), nil
	return &h
}

// askRun sends req on srv's control stream once the guest is connected and
// returns the guest's RunResponse for it and how long it took.
func (g *guest) askRun(srv *devmanager.Server, req *cvms.ComputationRunReq) (*cvms.RunResponse, time.Duration) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(g.ctx, 2*time.Minute)
	defer cancel()
	if err := srv.Wait(ctx, has(func(m devmanager.Received) bool { return m.Msg.GetVTPMattestationReport() != nil })); err != nil {
		g.t.Fatal("the guest never connected to the manager")
	}
	start := time.Now()
	if err := srv.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReq{RunReq: req}}); err != nil {
		g.t.Fatal(err)
	}
	var res *cvms.RunResponse
	wctx, wcancel := context.WithTimeout(g.ctx, runAnswerBound)
	defer wcancel()
	err := srv.Wait(wctx, has(func(m devmanager.Received) bool {
		if r := m.Msg.GetRunRes(); r != nil && r.GetComputationId() == req.GetId() {
			res = r
			return true
		}
		return false
	}))
	if err != nil {
		g.t.Fatalf("no RunResponse for %s within %v", req.GetId(), runAnswerBound)
	}
	return res, time.Since(start)
}

// with returns a copy of the guest's computation with another id and
// AgentConfig.
func (g *guest) with(id string, ac *cvms.AgentConfig) *cvms.ComputationRunReq {
	req := proto.Clone(g.req).(*cvms.ComputationRunReq)
	req.Id, req.AgentConfig = id, ac
	return req
}

// TestE2ERunResponses drives every way a computation's start can fail in a
// real cvmd and checks that the manager gets a RunResponse naming the
// cause, in bounded time: aTLS asked of a VM without an attestation
// platform (where TLS computations still run and attestation is refused
// with what is missing), an AgentConfig the ingress cannot use, a
// child that fails, and a dependency that never says READY.
func TestE2ERunResponses(t *testing.T) {
	g := newGuest(t)
	tests := []struct {
		name string
		args []string // cvmd flags
		ac   *cvms.AgentConfig
		want []string      // every piece the RunResponse error must name
		max  time.Duration // the answer's bound, when tighter than runAnswerBound
		test bool          // needs the test build (--test-misbehave)
		then func(h *guest, srv *devmanager.Server)
	}{
		{
			name: "aTLS without an attestation platform",
			// This host has no SEV-SNP: forcing it is a VM without its platform.
			args: []string{"--attestation", "snp"},
			ac:   &cvms.AgentConfig{AttestedTls: true},
			want: []string{"agent_config.attested_tls", "attestation: no platform", "mode snp needs", "no SEV-SNP report interface"},
			then: func(h *guest, srv *devmanager.Server) {
				// The same VM runs a TLS computation to its result (a
				// plaintext one runs in tests/vm TestCocosManagerVM)...
				ca, cert, key := writeTLSFiles(h.t, h.work)
				if res, took := h.askRun(srv, h.with("tls-1", &cvms.AgentConfig{CertFile: cert, KeyFile: key})); res.GetError() != "" {
					h.t.Fatalf("TLS computation refused after %v: %s", took, res.GetError())
				}
				env := map[string]string{"AGENT_GRPC_SERVER_CA_CERTS": ca}
				h.retryEnv(env, "algo", h.algo, h.priv, "-a", "bin")
				h.retryEnv(env, "data", h.data, h.priv)
				if r := h.resultEnv(env); !strings.HasPrefix(r, "accuracy 0.9") {
					h.t.Fatalf("result.txt = %q", r)
				}
				// ...and refuses attestation, saying what is missing: to the
				// CLI, and on the wire as FailedPrecondition.
				out, err := h.cvmEnv(env, "attestation", "get", "snp", "--tee", strings.Repeat("ab", 64))
				if err == nil || !strings.Contains(out, "attestation: no platform: mode snp needs what this VM lacks: no SEV-SNP report interface") {
					h.t.Fatalf("cvm attestation get on a VM without its platform: %v\n%s", err, out)
				}
				creds, err := credentials.NewClientTLSFromFile(ca, "")
				if err != nil {
					h.t.Fatal(err)
				}
				conn, err := grpc.NewClient(h.agentAddr, grpc.WithTransportCredentials(creds))
				if err != nil {
					h.t.Fatal(err)
				}
				defer conn.Close()
				st, err := agentpb.NewAgentServiceClient(conn).Attestation(h.ctx, &agentpb.AttestationRequest{Type: 1, VtpmNonce: []byte("n")})
				if err == nil {
					_, err = st.Recv()
				}
				if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "no SEV-SNP report interface") {
					h.t.Fatalf("vTPM attestation on the wire: %v, want FailedPrecondition naming what is missing", err)
				}
				// The health answer: the agent serves, attestation does not.
				hc := healthpb.NewHealthClient(conn)
				for svc, want := range map[string]healthpb.HealthCheckResponse_ServingStatus{"agent": healthpb.HealthCheckResponse_SERVING, "attestation": healthpb.HealthCheckResponse_NOT_SERVING} {
					r, err := hc.Check(h.ctx, &healthpb.HealthCheckRequest{Service: svc})
					if err != nil || r.GetStatus() != want {
						h.t.Fatalf("health of %q: %v, %v; want %v", svc, r.GetStatus(), err, want)
					}
				}
			},
		},
		{
			name: "AgentConfig naming a file that is not there",
			args: []string{"--attestation", "simulated"},
			ac:   &cvms.AgentConfig{CertFile: "/nonexistent/cert.pem", KeyFile: "/nonexistent/key.pem"},
			want: []string{"agent_config.cert_file", "/nonexistent/cert.pem"},
		},
		{
			name: "AgentConfig whose certificate is not one",
			args: []string{"--attestation", "simulated"},
			ac:   &cvms.AgentConfig{CertFile: "not\na certificate", KeyFile: "not\na key"},
			want: []string{"agent_config", "cert_file and key_file"},
		},
		{
			name: "a child that fails",
			test: true,
			args: []string{"--attestation", "simulated", "--test-misbehave", "runner=crash"},
			want: []string{"child runner failed", "last exit"},
		},
		{
			name: "a dependency that never says READY",
			test: true,
			args: []string{"--attestation", "simulated", "--test-misbehave", "egress=silent", "--ready-timeout", "2s", "--start-timeout", "8s"},
			// Within the start timeout: "not every child is READY within 8s:
			// egress starting (last exit: ...)", or, should egress have hit
			// the restart cap first, "child egress failed ...".
			want: []string{"egress", "not READY within 2s"},
			max:  8*time.Second + 5*time.Second,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := g.fresh(t)
			if tc.test {
				h.cvmdName = "cvmd-test"
			}
			srv := h.startManager(false)
			h.startCvmdArgs("", append([]string{"--start-timeout", "20s"}, tc.args...)...)
			res, took := h.askRun(srv, h.with("c-1", tc.ac))
			if tc.max > 0 && took > tc.max {
				t.Errorf("answered after %v, want within %v", took, tc.max)
			}
			if res.GetError() == "" {
				t.Fatalf("computation accepted after %v, want a refusal naming %q", took, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.GetError(), w) {
					t.Errorf("RunResponse error %q does not name %q", res.GetError(), w)
				}
			}
			t.Logf("answered in %v: %s", took.Round(time.Millisecond), res.GetError())
			if tc.then != nil {
				tc.then(h, srv)
			}
		})
	}
}
