package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/attest/maa"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/pull"
	"github.com/cvmd/cvmd/pull/kbs"
)

// PullConfig builds the fetcher's configuration from the settings: every
// connection through egress (the agent's "to:egress" edge), TLS roots from
// the system pool plus the settings' extra PEM, the object stores, and a KBS client
// whose evidence comes from the attestation child (att, may be nil: then
// encrypted resources fail with a KBS error).
func PullConfig(s *config.PullSettings, egress *ipc.Dialer, att attestation.AttestationClient) (*pull.Config, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if pem := s.GetCaPem(); len(pem) > 0 && !roots.AppendCertsFromPEM(pem) {
		return nil, errors.New("agent: pull.ca_pem has no certificate")
	}
	dial := (&pull.EgressDialer{Edge: egress.Dial}).DialContext
	cfg := &pull.Config{
		Dial:      dial,
		RootCAs:   roots,
		Endpoints: pull.EndpointsFrom(s),
		Retry:     pull.Backoff{Attempts: int(s.GetAttempts()), Max: time.Duration(s.GetBackoffMaxMs()) * time.Millisecond},
	}
	if att != nil {
		c, err := kbs.New(kbs.Config{HTTP: pull.NewHTTPClient(dial, roots), Evidence: AttestationEvidence(att)})
		if err != nil {
			return nil, err
		}
		cfg.Keys = c
	}
	return cfg, nil
}

// AttestationEvidence asks the attestation child for evidence for a KBS:
// SNP+vTPM if this VM has both, else vTPM, else SNP (the order the manager
// link uses), remembering what worked.
func AttestationEvidence(att attestation.AttestationClient) kbs.EvidenceFunc {
	names := map[int32]string{2: "SNP-vTPM", 1: "vTPM", 0: "SNP"}
	var mu sync.Mutex
	order := []int32{2, 1, 0}
	return func(ctx context.Context, reportData, nonce []byte) ([]byte, string, error) {
		mu.Lock()
		try := order
		mu.Unlock()
		var errs []error
		for _, p := range try {
			res, err := att.Evidence(ctx, &attestation.EvidenceRequest{ReportData: reportData, Nonce: nonce, PlatformType: p})
			if err == nil {
				mu.Lock()
				order = []int32{p} // this VM's platform from now on
				mu.Unlock()
				return res.GetEatToken(), names[p], nil
			}
			if status.Code(err) != codes.Unimplemented {
				return nil, "", fmt.Errorf("%s evidence: %w", names[p], err)
			}
			errs = append(errs, err)
		}
		return nil, "", fmt.Errorf("no platform gives evidence: %w", errors.Join(errs...))
	}
}

// MAAClient is the client of the MAA instance at url (maa.DefaultURL if
// empty, as Cocos's AGENT_MAA_URL), reached like pull mode's sources:
// through the egress, with its TLS roots. The egress lets the agent reach
// the instance's host:port only (the supervisor's table grants it).
func MAAClient(url string, p *pull.Config) *maa.Client {
	return &maa.Client{URL: MAAURL(url), HTTP: pull.NewHTTPClient(p.Dial, p.RootCAs)}
}

// MAAURL is the MAA instance a setting names: url, or Cocos's default
// (maa.DefaultURL) if empty.
func MAAURL(url string) string {
	if url == "" {
		return maa.DefaultURL
	}
	return url
}
