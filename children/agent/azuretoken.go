package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/attest/maa"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/pull"
)

// azureTokenTimeout bounds one azure-token request: the evidence (an NV
// write, the HCL's refresh, a quote) and MAA's answer.
const azureTokenTimeout = 60 * time.Second

// azureToken answers Cocos's AzureAttestationToken: the attestation child
// makes the evidence (it has no network), the agent posts it to MAA through
// the egress child (Config.MAA) and returns MAA's JWT as it came. The
// token is not validated here: its reader checks it against MAA's keys
// (`cvm attestation get azure-token` does).
func (a *Agent) azureToken(ctx context.Context, req *agentpb.AttestationTokenRequest) ([]byte, error) {
	nonce := req.GetTokenNonce()
	if len(nonce) > maa.NonceSize {
		// Cocos's words.
		return nil, fmt.Errorf("%w: malformed token nonce, expect less or equal to %d bytes", ErrInvalidArgument, maa.NonceSize)
	}
	if a.cfg.Attestation == nil {
		return nil, fmt.Errorf("%w: Azure token: no attestation service is wired to this agent", ErrUnavailable)
	}
	if a.cfg.MAA == nil {
		return nil, fmt.Errorf("%w: Azure token: this agent has no way to MAA (no egress edge)", ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(ctx, azureTokenTimeout)
	defer cancel()
	ev, err := a.cfg.Attestation.AzureTokenEvidence(ctx, &attestation.AzureTokenEvidenceRequest{Nonce: nonce})
	if err != nil {
		s, _ := status.FromError(err)
		switch s.Code() {
		case codes.Unimplemented:
			return nil, fmt.Errorf("%w: Azure token: %s", ErrNotSupported, s.Message())
		case codes.InvalidArgument:
			return nil, fmt.Errorf("%w: Azure token: %s", ErrInvalidArgument, s.Message())
		}
		return nil, fmt.Errorf("%w: Azure token evidence: %s", ErrUnavailable, s.Message())
	}
	padded := pad(nonce, maa.NonceSize)
	tok, err := a.cfg.MAA.AttestTDX(ctx, maa.NewTDXRequest(ev.GetQuote(), ev.GetRuntimeClaims(), padded))
	if err != nil {
		return nil, fmt.Errorf("%w: Azure token from %s: %s", ErrUpstream, a.cfg.MAA.URL, maaFailure(err))
	}
	a.log.Info("Azure token", "maa", a.cfg.MAA.URL, "platform", ev.GetPlatform(), "bytes", len(tok))
	return []byte(tok), nil
}

// maaFailure says what went wrong on the way to MAA: its refusal (status
// and body), the egress's, or the connection's.
func maaFailure(err error) string {
	var se *maa.StatusError
	var ee *pull.EgressError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("MAA refused the evidence: %d: %s", se.Status, se.Body)
	case errors.As(err, &ee):
		return fmt.Sprintf("MAA unreachable: %v", ee)
	case errors.As(err, &ne):
		return fmt.Sprintf("MAA unreachable: %v", err)
	}
	return err.Error()
}
