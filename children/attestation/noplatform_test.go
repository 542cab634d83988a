//go:build !nosim

package attestation

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/attest"
	pb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
)

func TestModeSettings(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want *config.AttestationSettings
	}{
		{"", &config.AttestationSettings{}},
		{"auto", &config.AttestationSettings{}},
		{"simulated", &config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateSnp: true}},
		{"snp", &config.AttestationSettings{Force: "snp"}},
		{"snp-vtpm", &config.AttestationSettings{Force: "snp-vtpm"}},
		// Not a mode: passed on, so that the child says the VM has no
		// platform, naming it.
		{"simulate", &config.AttestationSettings{Force: "simulate"}},
	} {
		got := ModeSettings(tc.mode)
		if got.GetMode() != tc.want.GetMode() || got.GetSimulateSnp() != tc.want.GetSimulateSnp() || got.GetForce() != tc.want.GetForce() {
			t.Errorf("ModeSettings(%q) = %v, want %v", tc.mode, got, tc.want)
		}
		if ValidMode(tc.mode) != (tc.mode != "" && tc.mode != "simulate") {
			t.Errorf("ValidMode(%q) = %v", tc.mode, ValidMode(tc.mode))
		}
	}
}

// TestNoPlatform is a VM without what its mode needs: the service starts
// (no crash loop), and says what is missing in Status, in the health
// answer, in the platform event and in the FailedPrecondition every
// evidence request gets; measurements are still acknowledged. This host has
// no TPM device, no SEV-SNP and no TDX interface; swtpm stands in for a
// TPM where one is needed.
func TestNoPlatform(t *testing.T) {
	noTPM := filepath.Join(t.TempDir(), "tpmrm0")
	tests := []struct {
		name     string
		st       func(t *testing.T) *config.AttestationSettings
		mode     string
		missing  []string // all must be named
		withTPM  bool
		platform int32 // the aTLS platform when there is one
	}{
		{"auto, nothing", func(*testing.T) *config.AttestationSettings {
			return &config.AttestationSettings{TpmPath: noTPM}
		}, "auto", []string{"no TPM at " + noTPM, "no SEV-SNP report interface", "no TDX report interface"}, false, 0},
		{"forced vTPM, no TPM", func(*testing.T) *config.AttestationSettings {
			return &config.AttestationSettings{TpmPath: noTPM, Force: "vtpm"}
		}, "vtpm", []string{"mode vtpm needs", "no TPM at " + noTPM}, false, 0},
		{"forced SEV-SNP on a vTPM-only VM", func(t *testing.T) *config.AttestationSettings {
			return &config.AttestationSettings{TpmPath: swtpm(t), Force: "snp"}
		}, "snp", []string{"mode snp needs", "no SEV-SNP report interface"}, true, 0},
		{"forced Azure on a plain vTPM", func(t *testing.T) *config.AttestationSettings {
			return &config.AttestationSettings{TpmPath: swtpm(t), Force: "azure"}
		}, "azure", []string{"no Azure HCL report"}, true, 0},
		{"a mode that is none", func(*testing.T) *config.AttestationSettings {
			return ModeSettings("simualted")
		}, "simualted", []string{`attestation mode "simualted" is not one of auto, simulated`}, false, 0},
		{"forced vTPM with a TPM", func(t *testing.T) *config.AttestationSettings {
			return &config.AttestationSettings{TpmPath: swtpm(t), Force: "vtpm"}
		}, "vtpm", nil, true, int32(attest.VTPM)},
		{"auto with a TPM", func(t *testing.T) *config.AttestationSettings {
			return &config.AttestationSettings{TpmPath: swtpm(t)}
		}, "auto", nil, true, int32(attest.VTPM)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.st(t), t.TempDir())
			if err != nil {
				t.Fatalf("New: %v (a missing platform must not stop the child)", err)
			}
			defer s.Close()
			c, health := serveWithHealth(t, s)
			st, err := c.Status(context.Background(), &pb.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if st.GetMode() != tc.mode {
				t.Errorf("mode %q, want %q", st.GetMode(), tc.mode)
			}
			h, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: pb.Attestation_ServiceDesc.ServiceName})
			if err != nil {
				t.Fatal(err)
			}
			n := random32(t)
			_, everr := c.Evidence(context.Background(), &pb.EvidenceRequest{Nonce: n, ReportData: n, PlatformType: int32(attest.VTPM)})
			if tc.missing == nil {
				if st.GetNoPlatform() != "" || st.GetAtlsPlatformType() != tc.platform || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Fatalf("status %v, health %v; want a platform (aTLS type %d) and SERVING", st, h.GetStatus(), tc.platform)
				}
				if everr != nil {
					t.Fatalf("evidence: %v", everr)
				}
				return
			}
			for _, m := range tc.missing {
				if !strings.Contains(st.GetNoPlatform(), m) {
					t.Errorf("no_platform %q does not name %q", st.GetNoPlatform(), m)
				}
			}
			if h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("health %v, want NOT_SERVING", h.GetStatus())
			}
			for _, p := range []attest.Platform{attest.SNP, attest.VTPM, attest.SNPvTPM, attest.Azure, attest.TDX} {
				_, err := c.Evidence(context.Background(), &pb.EvidenceRequest{Nonce: n, ReportData: n, PlatformType: int32(p)})
				if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "attestation: no platform: "+st.GetNoPlatform()) {
					t.Errorf("evidence %s: %v, want FailedPrecondition naming what is missing", p, err)
				}
			}
			// The supervisor's measurements are acknowledged (kept, and
			// extended only where there is a TPM), never refused forever.
			measure(t, s, "b1", 1, attest.EventBoot, attest.Boot{BootID: "b1"})
			r := measure(t, s, "b1", 2, attest.EventChildTable, attest.ChildTable{SHA256: strings.Repeat("ab", 32)})
			if (len(r.GetPcrSha256()) != 0) != tc.withTPM {
				t.Errorf("measure reply %v: PCR value present %v, want %v", r, len(r.GetPcrSha256()) != 0, tc.withTPM)
			}
			// The supervisor resends an event whose answer came too late:
			// acknowledged again, not applied twice (this panicked without
			// a TPM, and the child restarted, on a loaded VM).
			if again := measure(t, s, "b1", 2, attest.EventChildTable, attest.ChildTable{SHA256: strings.Repeat("ab", 32)}); again.GetEvents() != r.GetEvents() {
				t.Errorf("resent event: %d events, want %d", again.GetEvents(), r.GetEvents())
			}
			if tc.withTPM {
				// The platform event, first in the log, says it too.
				ev := s.store.snapshot()[0]
				if ev.Type != attest.EventPlatform || !strings.Contains(string(ev.Data), `"no_platform":`) {
					t.Errorf("first event %s %s, want the platform event naming no_platform", ev.Type, ev.Data)
				}
			}
		})
	}
}

// serveWithHealth is serve plus a health client on the same edge.
func serveWithHealth(t *testing.T, s *Service) (pb.AttestationClient, healthpb.HealthClient) {
	t.Helper()
	conn := serveConn(t, s)
	return pb.NewAttestationClient(conn), healthpb.NewHealthClient(conn)
}
