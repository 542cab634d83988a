// Package attestation is the attestation child (`cvmd attestation`): the only
// process that holds the TPM and the SEV-SNP report interface. It serves
// proto/attestation's Evidence and ExtendManifest on every "from:*" edge
// (agent, ingress, supervisor), answers the same requests and the
// supervisor's MeasureRequest as control commands, and keeps the measurement
// log in its state dir.
//
// It has no network and keeps no platform key beyond the TPM's attestation
// key (which stays in the TPM) and, on SNP without a TPM, one ephemeral
// token-signing key bound by an SNP report. It does not verify anything.
//
// Platforms (config.AttestationSettings.mode, chosen in platform.go): AUTO
// and HARDWARE use /dev/tpmrm0, configfs-tsm or /dev/sev-guest, configfs-tsm
// or /dev/tdx_guest (all that are present, or the one `force` names);
// SIMULATED uses the go-tpm-tools simulator and, with simulate_snp or
// simulate_tdx, a simulated SEV-SNP or TDX signed by test-only chains.
// Simulated tokens say so (attest/sim). A VM without the platform its mode
// needs still gets this child: it reports "no platform: <what is missing>"
// (log, event, health NOT_SERVING, Status) and refuses evidence with
// FailedPrecondition naming it, so that everything else keeps running.
package attestation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/children/child"
	pb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
)

// DefaultTPMPath is the TPM resource manager device.
const DefaultTPMPath = "/dev/tpmrm0"

// firmwareLogPath is where the kernel exposes the firmware's TCG event log.
const firmwareLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// Main runs the attestation child.
func Main(ctx context.Context, env *child.Env) error {
	var st config.AttestationSettings
	if err := env.Settings(&st); err != nil {
		return err
	}
	svc, err := New(&st, env.Config.GetStateDir())
	if err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	defer svc.Close()
	svc.Log = env.Log
	if svc.simulated {
		env.Log.Warn("SIMULATED attestation platform: tokens prove nothing and verifiers refuse them by default",
			"tpm", "simulator", "snp", svc.att.SNP != nil)
	}
	if np := svc.NoPlatform(); np != "" {
		// A fact of this VM, said once: computations without aTLS go on.
		env.Log.Warn("attestation: no platform: evidence and aTLS are refused", "mode", svc.mode, "missing", np)
		env.Events().Event("attestation.no_platform", "Warning", "mode", svc.mode, "missing", np)
	} else {
		env.Log.Info("attestation platform", "mode", svc.mode, "platform", svc.describe())
	}
	env.HandleCommand(&pb.StatusRequest{}, func(ctx context.Context, body proto.Message) (proto.Message, error) {
		return svc.Status(ctx, body.(*pb.StatusRequest))
	})
	env.HandleCommand(&pb.MeasureRequest{}, func(ctx context.Context, body proto.Message) (proto.Message, error) {
		return svc.Measure(body.(*pb.MeasureRequest))
	})
	env.HandleCommand(&pb.ExtendManifestRequest{}, func(ctx context.Context, body proto.Message) (proto.Message, error) {
		return svc.ExtendManifest(ctx, body.(*pb.ExtendManifestRequest))
	})
	// The supervisor's manager link gets evidence (Cocos's startup
	// vTPMattestationReport) over the control channel, without an edge.
	env.HandleCommand(&pb.EvidenceRequest{}, func(ctx context.Context, body proto.Message) (proto.Message, error) {
		return svc.Evidence(ctx, body.(*pb.EvidenceRequest))
	})
	return svc.Run(ctx, env.Listener(), env.Ready)
}

// Service is the attestation child's state, usable without a child.Env (tests).
type Service struct {
	pb.UnimplementedAttestationServer

	// Log receives one line per measurement and per refused request; nil = none.
	Log *slog.Logger

	att        *attest.Attester
	tpm        *attest.TPM
	store      *store
	simulated  bool
	mode       string // the attestation mode (ModeSettings' names)
	noPlatform string // what the mode needs that the VM lacks; "" when nothing
	closers    []io.Closer

	wg        sync.WaitGroup // background warm-up; Close waits for it
	quit      chan struct{}  // closed by Close: a warm-up not begun is dropped
	closeOnce sync.Once

	mu       sync.RWMutex // write: a measurement (log append + extend); read: a quote and its log (Attester.MeasureLock)
	lastBoot string       // guarded by mu
	lastSeq  uint64       // guarded by mu
}

// New opens the platform chosen by st and the measurement log in stateDir
// ("" = in memory only, which a hardware TPM refuses: a restart would lose
// the log while the PCRs keep its events).
func New(st *config.AttestationSettings, stateDir string) (_ *Service, err error) {
	s := &Service{att: &attest.Attester{Issuer: st.GetIssuer(), SWVersion: version()}, quit: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.openPlatform(st); err != nil {
		return nil, err
	}
	s.att.Simulated = s.simulated
	s.att.TPM = s.tpm
	if s.store, err = openStore(stateDir); err != nil {
		return nil, err
	}
	s.att.Log = s.store.snapshot
	s.att.MeasureLock = &s.mu
	if s.tpm != nil {
		if stateDir == "" && !s.simulated {
			return nil, errors.New("a hardware TPM needs a state dir for the measurement log")
		}
		if _, err := recoverLog(s.store, s.tpm, s.simulated); err != nil {
			return nil, err
		}
		if len(s.store.snapshot()) == 0 {
			// First start of this boot: the platform label is the first event,
			// so simulated evidence is marked inside the quoted PCR itself.
			e, err := attest.JSONEvent(attest.EventPlatform, s.platformInfo())
			if err != nil {
				return nil, err
			}
			if err := s.apply(e); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Close releases the TPM and the log.
func (s *Service) Close() {
	s.closeOnce.Do(func() { close(s.quit) })
	s.wg.Wait()
	if s.tpm != nil {
		s.tpm.Close()
	}
	if s.store != nil {
		s.store.close()
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i].Close()
	}
	s.closers = nil
}

// Attester returns the evidence producer (benchmarks, tests).
func (s *Service) Attester() *attest.Attester { return s.att }

// Run serves ln until ctx ends (cancellation is not an error); ready is
// called once the server is set up.
func (s *Service) Run(ctx context.Context, ln net.Listener, ready func() error) error {
	srv := grpc.NewServer()
	pb.RegisterAttestationServer(srv, s)
	// NOT_SERVING says "no platform" to a health check; Status says what
	// is missing.
	h := health.NewServer()
	serving := healthpb.HealthCheckResponse_SERVING
	if s.noPlatform != "" {
		serving = healthpb.HealthCheckResponse_NOT_SERVING
	}
	h.SetServingStatus("", serving)
	h.SetServingStatus(pb.Attestation_ServiceDesc.ServiceName, serving)
	healthpb.RegisterHealthServer(srv, h)
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Go(func() { errc <- srv.Serve(ln) })
	defer wg.Wait()
	if ready != nil {
		if err := ready(); err != nil {
			srv.Stop()
			return err
		}
	}
	select {
	case <-ctx.Done():
		child.StopServer(srv, 2*time.Second)
		return nil
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return fmt.Errorf("serving: %w", err)
	}
}

// Evidence implements the Attestation service.
func (s *Service) Evidence(ctx context.Context, req *pb.EvidenceRequest) (*pb.EvidenceResponse, error) {
	p := attest.Platform(req.GetPlatformType())
	if s.noPlatform != "" {
		return nil, status.Error(codes.FailedPrecondition, "attestation: no platform: "+s.noPlatform)
	}
	tok, err := s.att.Attest(attest.Request{ReportData: req.GetReportData(), Nonce: req.GetNonce(), Platform: p})
	if err != nil {
		s.logger().Warn("evidence refused", "platform", p.String(), "err", err)
		return nil, grpcError(err)
	}
	return &pb.EvidenceResponse{EatToken: tok, Platform: s.att.Describe(p)}, nil
}

// AzureTokenEvidence implements the Attestation service: what the agent
// posts to Microsoft Azure Attestation for a token (the child has no
// network).
func (s *Service) AzureTokenEvidence(ctx context.Context, req *pb.AzureTokenEvidenceRequest) (*pb.AzureTokenEvidenceResponse, error) {
	quote, claims, err := s.att.AzureTokenEvidence(req.GetNonce())
	if err != nil {
		s.logger().Warn("Azure token evidence refused", "err", err)
		return nil, grpcError(err)
	}
	return &pb.AzureTokenEvidenceResponse{Quote: quote, RuntimeClaims: claims, Platform: s.att.Describe(attest.Azure)}, nil
}

// ExtendManifest implements the Attestation service and the supervisor's
// command of the same name: PCR 16, as Cocos.
func (s *Service) ExtendManifest(ctx context.Context, req *pb.ExtendManifestRequest) (*pb.MeasureReply, error) {
	if len(req.GetManifestJson()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "attestation: manifest_json is empty")
	}
	if s.tpm == nil {
		return nil, status.Error(codes.Unimplemented, "attestation: no TPM: PCR 16 cannot be extended")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := attest.ManifestEvent(req.GetManifestJson())
	if err := s.apply(ev); err != nil {
		s.logger().Error("manifest measurement failed", "err", err)
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.logger().Info("measured manifest", "pcr", ev.PCR, "sha3_256", fmt.Sprintf("%x", ev.Data[:32]))
	return s.reply(attest.ManifestPCR)
}

// Status implements the Attestation service and the supervisor's command
// of the same name: the mode, and the platform or what is missing.
func (s *Service) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusReply, error) {
	r := &pb.StatusReply{Mode: s.mode, NoPlatform: s.noPlatform, Simulated: s.simulated}
	if s.noPlatform == "" {
		r.Platform = s.describe()
		r.AtlsPlatformType = int32(s.atlsPlatform())
	}
	return r, nil
}

// describe names what produces this VM's aTLS evidence.
func (s *Service) describe() string { return s.att.Describe(s.atlsPlatform()) }

// Measure applies a supervisor MeasureRequest exactly once per (boot_id, seq).
//
// Without a TPM the events are kept in the log file only, not extended
// anywhere (tokens still name their boot; nothing quotes the rest), and
// acknowledged with an empty pcr_sha256: there is no PCR to go to, and a
// refusal would only make the supervisor resend them forever.
func (s *Service) Measure(req *pb.MeasureRequest) (*pb.MeasureReply, error) {
	if req.GetSeq() == 0 || req.GetBootId() == "" {
		return nil, errors.New("attestation: measure: boot_id and seq (≥ 1) are required")
	}
	e := attest.Event{PCR: attest.MeasurePCR, Type: req.GetType(), Data: req.GetData(), BootID: req.GetBootId(), Seq: req.GetSeq()}
	if e.Type == attest.EventPlatform {
		return nil, errors.New("attestation: measure: the platform event is the attestation child's own")
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("attestation: measure: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastBoot == "" {
		for _, old := range s.store.snapshot() {
			if old.BootID != "" {
				s.lastBoot, s.lastSeq = old.BootID, old.Seq
			}
		}
	}
	if req.GetBootId() == s.lastBoot && req.GetSeq() <= s.lastSeq {
		s.logger().Debug("measurement already applied", "boot_id", e.BootID, "seq", e.Seq)
		return s.reply(attest.MeasurePCR) // already applied: a resend after a restart
	}
	if s.tpm == nil {
		if err := s.store.append(e); err != nil {
			return nil, err
		}
		s.logger().Info("event recorded (no TPM to measure it into)", "type", e.Type, "data", string(e.Data), "seq", e.Seq)
		s.lastBoot, s.lastSeq = e.BootID, e.Seq
		return s.reply(attest.MeasurePCR)
	}
	if err := s.apply(e); err != nil {
		s.logger().Error("measurement failed", "type", e.Type, "seq", e.Seq, "err", err)
		return nil, err
	}
	s.logger().Info("measured", "pcr", e.PCR, "type", e.Type, "data", string(e.Data), "seq", e.Seq)
	s.lastBoot, s.lastSeq = e.BootID, e.Seq
	return s.reply(attest.MeasurePCR)
}

// apply logs e durably, then extends it. Preconditions: s.mu held (or New).
func (s *Service) apply(e attest.Event) error {
	if err := s.store.append(e); err != nil {
		return err
	}
	return s.tpm.Extend(e)
}

// reply is a measurement's answer: the PCR's value after it, which a VM
// without a TPM does not have. Preconditions: s.mu held (or New).
func (s *Service) reply(pcr uint32) (*pb.MeasureReply, error) {
	r := &pb.MeasureReply{Pcr: pcr, Events: uint64(len(s.store.snapshot()))}
	if s.tpm == nil {
		return r, nil
	}
	v, err := s.tpm.ReadPCR(int(pcr))
	if err != nil {
		return nil, err
	}
	r.PcrSha256 = v
	return r, nil
}

// openTPM opens a TPM character device, or a swtpm UnixIO socket (a
// software TPM whose state outlives this process: development and tests).
func openTPM(path string) (io.ReadWriteCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&os.ModeSocket != 0 {
		return net.Dial("unix", path)
	}
	return os.OpenFile(path, os.O_RDWR, 0)
}

func (s *Service) logger() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// grpcError chooses what leaves the child (style 12).
func grpcError(err error) error {
	switch {
	case errors.Is(err, attest.ErrBadRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, attest.ErrUnimplemented), errors.Is(err, attest.ErrUnsupportedPlatform):
		return status.Error(codes.Unimplemented, err.Error())
	}
	return status.Error(codes.Internal, "attestation: producing evidence failed: "+err.Error())
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return ""
}
