//go:build !nosim

package attestation

import (
	sevclient "github.com/google/go-sev-guest/client"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/proto/config"
)

// openSimulated opens the TPM simulator and, if asked, the simulated SNP.
// Build with -tags nosim to leave both (cgo simulator, test-only AMD chain)
// out of a production binary.
func (s *Service) openSimulated(st *config.AttestationSettings) error {
	rw, err := sim.OpenTPM()
	if err != nil {
		return err
	}
	s.closers = append(s.closers, rw)
	if s.tpm, err = attest.NewTPM(rw); err != nil {
		return err
	}
	if st.GetSimulateSnp() {
		// Built in the background: the test-only chain is slow to certify.
		lazy := &sim.LazySNP{}
		s.att.SNP = lazy
		s.wg.Go(func() { lazy.Get() })
	}
	return nil
}

var _ sevclient.QuoteProvider = (*sim.LazySNP)(nil)
