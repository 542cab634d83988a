package supervisor

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cvmd/cvmd/ipc"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
	"github.com/cvmd/cvmd/supervisor/manager"
)

// The manager link (supervisor/manager) plugs in here: it reads Cocos's
// environment file (--env, else /etc/cocos/environment in the VM) and, in
// the VM only, the kernel command line; it drives computations through the
// Supervisor and forwards logfwd's queue. Without a configured manager URL
// the VM runs without a link (a log line says so).
func init() { RegisterManagerLink(runManagerLink) }

func runManagerLink(ctx context.Context, s *Supervisor) error {
	cfg := s.Config()
	env := cfg.EnvFile
	cmdline := ""
	if !cfg.Dev {
		if env == "" {
			env = manager.DefaultEnvFile
		}
		if b, err := os.ReadFile("/proc/cmdline"); err == nil {
			cmdline = string(b)
		}
	}
	mc, err := manager.LoadConfig(env, cmdline)
	if errors.Is(err, manager.ErrNoConfig) {
		s.Log().Info("no manager configured; running without a manager link", "env", env)
		<-ctx.Done()
		return nil
	}
	if err != nil {
		return err
	}
	deps := manager.Deps{Supervisor: linkSupervisor{s}, Log: s.Log().With("part", "manager-link"), Events: s.Events()}
	if d := s.Dialer("logfwd"); d != nil {
		conn, err := ipc.GRPCClient(d)
		if err != nil {
			return fmt.Errorf("supervisor: logfwd client for the manager link: %w", err)
		}
		defer conn.Close()
		deps.Logs = logs.NewCollectorClient(conn)
	}
	// Evidence comes over an edge when the table gives the supervisor one,
	// else as a control command to the attestation child (which answers
	// EvidenceRequest there too): either way the report is bound to the
	// client certificate, as Cocos's guest binds it.
	evidence := func(ctx context.Context, req *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error) {
		// The link may come up before the attestation child is ready:
		// retry until the caller's deadline.
		out, err := s.Command(ctx, AttestationChild, req)
		for (errors.Is(err, ErrNotRunning) || errors.Is(err, ErrChildGone)) && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
				out, err = s.Command(ctx, AttestationChild, req)
			}
		}
		if err != nil {
			return nil, err
		}
		r, ok := out.(*attestpb.EvidenceResponse)
		if !ok {
			return nil, fmt.Errorf("supervisor: attestation child answered %T, want EvidenceResponse", out)
		}
		return r, nil
	}
	if d := s.Dialer("attestation"); d != nil {
		conn, err := ipc.GRPCClient(d)
		if err != nil {
			return fmt.Errorf("supervisor: attestation client for the manager link: %w", err)
		}
		defer conn.Close()
		c := attestpb.NewAttestationClient(conn)
		evidence = func(ctx context.Context, req *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error) {
			return c.Evidence(ctx, req)
		}
	}
	deps.Attest = certAttestation(evidence)
	return manager.Run(ctx, mc, deps)
}

// certAttestation binds evidence to the manager client certificate as
// Cocos's guest does: report data SHA-512(cert PEM), vTPM nonce
// SHA-256(cert PEM), for the best platform the VM has (SNP+vTPM, then
// vTPM, then SNP).
func certAttestation(evidence func(context.Context, *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error)) manager.AttestFunc {
	return func(ctx context.Context, certPEM []byte) ([]byte, error) {
		rd := sha512.Sum512(certPEM)
		nonce := sha256.Sum256(certPEM)
		var last error
		for _, pt := range []int32{2, 1, 0} { // agent-wire numbering: SNP+vTPM, vTPM, SNP
			r, err := evidence(ctx, &attestpb.EvidenceRequest{ReportData: rd[:], Nonce: nonce[:], PlatformType: pt})
			if err == nil {
				return r.GetEatToken(), nil
			}
			last = err
		}
		return nil, fmt.Errorf("supervisor: attestation for the manager certificate: %w", last)
	}
}

// linkSupervisor adapts *Supervisor to manager.Supervisor.
type linkSupervisor struct{ s *Supervisor }

func (l linkSupervisor) Start(ctx context.Context, req *cvms.ComputationRunReq) error {
	return l.s.StartComputation(ctx, req)
}

func (l linkSupervisor) Stop(ctx context.Context, id string) error {
	return l.s.StopComputation(ctx, id)
}

func (l linkSupervisor) State(ctx context.Context) (string, error) {
	st, err := l.s.AgentState(ctx)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(st.GetState()), nil
}
