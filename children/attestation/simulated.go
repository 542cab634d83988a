//go:build !nosim

package attestation

import (
	"time"

	sevclient "github.com/google/go-sev-guest/client"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/proto/config"
)

// openSimulated opens the TPM simulator and, if asked, the simulated SNP or TDX.
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
		// Built in the background, once boot is likely over: certifying the
		// test-only chain is tens of milliseconds of RSA-4096 CPU, which at
		// once would compete with the children still being spawned. A
		// quote asked for earlier builds it then.
		lazy := &sim.LazySNP{}
		s.att.SNP = lazy
		s.wg.Go(func() {
			t := time.NewTimer(snpWarmDelay)
			defer t.Stop()
			select {
			case <-t.C:
				lazy.Get()
			case <-s.quit:
			}
		})
	}
	if st.GetSimulateTdx() {
		// P-256 only: cheap enough to build now.
		tdx, err := sim.NewTDX(sim.TDXOptions{})
		if err != nil {
			return err
		}
		s.att.TDX, s.att.TDXCollateral = tdx, tdx.Collateral
	}
	return nil
}

// snpWarmDelay is how long after start the simulated SNP is built unasked.
const snpWarmDelay = 2 * time.Second

var _ sevclient.QuoteProvider = (*sim.LazySNP)(nil)
