package agent

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/proto/attestation"
)

// AttestationHealthService is the public health service's name for whether
// this VM can attest: SERVING with a platform, NOT_SERVING on a VM without
// one (Attestation then says what is missing), SERVICE_UNKNOWN until the
// attestation child has answered.
const AttestationHealthService = "attestation"

// attestationHealth asks the attestation child once, when it answers, which
// platform the VM has and sets AttestationHealthService accordingly. It
// returns when it has, or when ctx ends.
func (a *Agent) attestationHealth(ctx context.Context, h *health.Server) {
	if a.cfg.Attestation == nil {
		h.SetServingStatus(AttestationHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
		return
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := a.cfg.Attestation.Status(cctx, &attestation.StatusRequest{}, grpc.WaitForReady(true))
		cancel()
		if status.Code(err) == codes.Unimplemented {
			return // an attestation service that cannot say: unknown
		}
		if err == nil {
			s := healthpb.HealthCheckResponse_SERVING
			if st.GetNoPlatform() != "" {
				s = healthpb.HealthCheckResponse_NOT_SERVING
			}
			h.SetServingStatus(AttestationHealthService, s)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
