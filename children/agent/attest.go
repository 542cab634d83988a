package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/attestation"
)

// attestation fetches evidence from the attestation child and streams it.
// Unauthenticated, as in Cocos.
func (a *Agent) attestation(req *agentpb.AttestationRequest, stream agentpb.AgentService_AttestationServer) error {
	tee, vtpm := req.GetTeeNonce(), req.GetVtpmNonce()
	switch {
	case len(tee) > 64:
		return fmt.Errorf("%w: teeNonce has %d bytes, at most 64", ErrInvalidArgument, len(tee))
	case len(vtpm) > 32:
		return fmt.Errorf("%w: vtpmNonce has %d bytes, at most 32", ErrInvalidArgument, len(vtpm))
	case req.GetType() < 0 || req.GetType() > 4:
		return fmt.Errorf("%w: invalid attestation type %d", ErrInvalidArgument, req.GetType())
	}
	if a.cfg.Attestation == nil {
		return fmt.Errorf("%w: attestation: no attestation service is wired to this agent", ErrUnavailable)
	}
	ctx, cancel := context.WithTimeout(stream.Context(), evidenceTimeout)
	defer cancel()
	res, err := a.cfg.Attestation.Evidence(ctx, &attestation.EvidenceRequest{
		ReportData: pad(tee, 64), Nonce: pad(vtpm, 32), PlatformType: req.GetType(),
	})
	if err != nil {
		msg := err.Error()
		if s, ok := status.FromError(err); ok {
			msg = s.Message()
		}
		// The child's words start with "attestation: " already.
		return fmt.Errorf("%w: attestation: %s", ErrUnavailable, strings.TrimPrefix(msg, "attestation: "))
	}
	tok := res.GetEatToken()
	return sendFile(stream, bytes.NewReader(tok), int64(len(tok)), &agentpb.AttestationResponse{})
}

// evidenceTimeout bounds one evidence request (a vTPM quote under TCG
// emulation takes ~100 ms; hardware SNP reports less).
const evidenceTimeout = 30 * time.Second

// pad zero-pads b to n bytes, as Cocos does with nonces.
func pad(b []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}

// maxIMA bounds the IMA list copied for one request.
const maxIMA = 512 << 20

// imaMeasurements streams the kernel's IMA list and, where the TPM exposes
// it, PCR10 with every message.
func (a *Agent) imaMeasurements(stream agentpb.AgentService_IMAMeasurementsServer) error {
	src, err := os.Open(a.lim.imaPath)
	if err != nil {
		if os.IsNotExist(err) {
			return fmt.Errorf("%w: IMA measurements: %s does not exist (the kernel has no IMA, or securityfs is not mounted)", ErrUnavailable, a.lim.imaPath)
		}
		return fmt.Errorf("%w: IMA measurements: %v", ErrUnavailable, err)
	}
	defer src.Close()
	// securityfs reports size 0: copy the list to learn its length, since
	// the file-size header comes first.
	tmp, err := os.CreateTemp(a.dirs.incoming, "ima-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	n, err := io.Copy(tmp, io.LimitReader(src, maxIMA+1))
	if err != nil {
		return fmt.Errorf("reading IMA measurements: %w", err)
	}
	if n > maxIMA {
		return fmt.Errorf("%w: IMA list is larger than %d bytes", ErrTooLarge, maxIMA)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	pcr10 := a.readPCR10()
	// PCR10 in every message: Cocos's CLI copies pcr10[:20] from each one
	// and panics on an empty one (a list over one 1 MiB message).
	err = sendFile(stream, tmp, n, &agentpb.IMAMeasurementsResponse{Pcr10: pcr10})
	if err == nil && n == 0 && pcr10 != nil {
		err = stream.Send(&agentpb.IMAMeasurementsResponse{Pcr10: pcr10})
	}
	return err
}

// readPCR10 returns PCR10 of the SHA-1 bank from sysfs, or nil.
func (a *Agent) readPCR10() []byte {
	b, err := os.ReadFile(a.lim.pcr10Path)
	if err != nil {
		return nil
	}
	v, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(v) != 20 {
		a.log.Warn("unreadable PCR10", "path", a.lim.pcr10Path)
		return nil
	}
	return v
}
