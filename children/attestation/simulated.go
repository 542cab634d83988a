//go:build !nosim

package attestation

import (
	"errors"
	"fmt"
	"io"
	"time"

	sevclient "github.com/google/go-sev-guest/client"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/hcl"
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
	switch st.GetSimulateAzure() {
	case "":
	case "snp", "tdx":
		if st.GetSimulateSnp() || st.GetSimulateTdx() {
			return errors.New("simulate_azure brings its own SEV-SNP or TDX: drop simulate_snp and simulate_tdx")
		}
		if err := s.provisionAzure(rw, st.GetSimulateAzure()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("simulate_azure %q: want \"snp\" or \"tdx\"", st.GetSimulateAzure())
	}
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

// provisionAzure makes the simulator an Azure CVM's vTPM with an HCL report
// of a simulated SEV-SNP or TDX.
func (s *Service) provisionAzure(rw io.ReadWriter, tee string) error {
	s.att.Azure = &attest.AzureVM{}
	if tee == "snp" {
		snp, err := sim.NewSNP(sim.SNPOptions{})
		if err != nil {
			return err
		}
		s.att.Azure.SNPCerts = snp.SNPCertChain
		return sim.ProvisionAzureSNP(rw, snp)
	}
	tdx, err := sim.NewTDX(sim.TDXOptions{})
	if err != nil {
		return err
	}
	s.att.Azure.TDXQuote, s.att.TDXCollateral = tdx.QuoteTDReport, tdx.Collateral
	pv, err := sim.ProvisionAzureTDXParavisor(rw, tdx)
	if err != nil {
		return err
	}
	// The simulated paravisor does what Azure's HCL does when the guest has
	// written user data to its NV index: a new report carrying it, in the
	// report's index (through s.tpm, made once provisioned).
	s.att.Azure.RefreshHCL = func() error {
		ud, err := s.tpm.ReadNV(hcl.UserDataNVIndex)
		if err != nil {
			return err
		}
		if len(ud) != 64 {
			return fmt.Errorf("simulated paravisor: user data of %d bytes, want 64", len(ud))
		}
		report, err := pv.Report([64]byte(ud))
		if err != nil {
			return err
		}
		return s.tpm.WriteNV(hcl.ReportNVIndex, report, false)
	}
	return nil
}

// snpWarmDelay is how long after start the simulated SNP is built unasked.
const snpWarmDelay = 2 * time.Second

var _ sevclient.QuoteProvider = (*sim.LazySNP)(nil)
