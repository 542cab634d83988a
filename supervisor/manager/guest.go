package manager

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/ipc"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/logs"
)

// Guest is what the supervisor proper gives the link it runs.
type Guest struct {
	// Environment reads Cocos's variables (see GuestEnvironment).
	Environment func() (vars map[string]string, source string, err error)
	// Supervisor drives computations.
	Supervisor Supervisor
	// LogQueue is the supervisor's edge to the log sink (logfwd), whose
	// Collector service holds the durable queue; nil: no log stream.
	LogQueue *ipc.Dialer
	// Evidence asks the attestation child for evidence; nil sends an empty
	// attestation report.
	Evidence func(ctx context.Context, req *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error)
	// Log and Events are the link's log and where its events go.
	Log    *slog.Logger
	Events logsink.Publisher
}

// RunGuest runs the link for the supervisor until ctx ends: it reads the
// environment (Cocos's environment file, and in the VM the kernel command
// line) and runs the link with it. Without a configured manager URL it
// logs so and waits for ctx: the VM then runs without a link.
func RunGuest(ctx context.Context, g Guest) error {
	vars, source, err := g.Environment()
	if err != nil {
		return err
	}
	cfg, err := configFrom(vars)
	if errors.Is(err, ErrNoConfig) {
		g.Log.Info("no manager configured; running without a manager link", "env", source)
		<-ctx.Done()
		return nil
	}
	if err != nil {
		return err
	}
	deps := Deps{Supervisor: g.Supervisor, Log: g.Log, Events: g.Events}
	if g.LogQueue != nil {
		conn, err := ipc.GRPCClient(g.LogQueue)
		if err != nil {
			return fmt.Errorf("manager: log queue client: %w", err)
		}
		defer conn.Close()
		deps.Logs = logs.NewCollectorClient(conn)
	}
	if g.Evidence != nil {
		deps.Attest = certAttestation(g.Evidence)
	}
	return Run(ctx, cfg, deps)
}

// certAttestation binds evidence to the manager client certificate as
// Cocos's guest does: report data SHA-512(cert PEM), vTPM nonce
// SHA-256(cert PEM), for the best platform the VM has (SNP+vTPM, then
// vTPM, then SNP).
func certAttestation(evidence func(context.Context, *attestpb.EvidenceRequest) (*attestpb.EvidenceResponse, error)) AttestFunc {
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
		return nil, fmt.Errorf("manager: attestation for the manager certificate: %w", last)
	}
}
