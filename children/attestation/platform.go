package attestation

// Which evidence providers this VM has, decided in one place: the mode of
// the settings, then what the hardware offers.

import (
	"errors"
	"fmt"
	"os"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/proto/config"
)

// openPlatform opens the TPM and TEE report interfaces st asks for.
func (s *Service) openPlatform(st *config.AttestationSettings) error {
	switch st.GetMode() {
	case config.AttestationSettings_SIMULATED:
		if st.GetSimulateSnp() && st.GetSimulateTdx() {
			return errors.New("simulate_snp and simulate_tdx: a VM is SEV-SNP or TDX, not both")
		}
		s.simulated = true
		return s.openSimulated(st)
	case config.AttestationSettings_AUTO, config.AttestationSettings_HARDWARE:
		if st.GetSimulateSnp() || st.GetSimulateTdx() || st.GetSimulateAzure() != "" {
			return errors.New("simulate_snp, simulate_tdx and simulate_azure need mode SIMULATED")
		}
		return s.openHardware(st)
	}
	return fmt.Errorf("unknown mode %v", st.GetMode())
}

// openHardware opens whatever of TPM, SEV-SNP and TDX the VM has.
func (s *Service) openHardware(st *config.AttestationSettings) error {
	path := st.GetTpmPath()
	if path == "" {
		path = DefaultTPMPath
	}
	if rw, err := openTPM(path); err == nil {
		s.closers = append(s.closers, rw)
		if s.tpm, err = attest.NewTPM(rw); err != nil {
			return fmt.Errorf("TPM %s: %w", path, err)
		}
		s.tpm.EventLogPath = firmwareLogPath
		if s.tpm.HasAzure() {
			// An Azure CVM: the paravisor's report is in the vTPM. Its VCEK
			// chain (THIM) and TDX quotes (IMDS) are host network services
			// this child cannot reach: verifiers bring the VCEK, and Azure
			// TDX evidence is not produced.
			s.att.Azure = &attest.AzureVM{}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("opening TPM: %w", err)
	}
	if qp, err := attest.SNPQuoteProviderAt(st.GetVmpl()); err == nil {
		s.att.SNP = qp
	}
	if qp, err := attest.TDXQuoteProvider(); err == nil {
		s.att.TDX = qp
	}
	if s.tpm == nil && s.att.SNP == nil && s.att.TDX == nil {
		return fmt.Errorf("%w: no TPM at %s, no SEV-SNP and no TDX report interface (use mode SIMULATED for development)", attest.ErrUnsupportedPlatform, path)
	}
	return nil
}

// platformInfo is the data of the first PCR 15 event: what produces evidence.
func (s *Service) platformInfo() attest.PlatformInfo {
	info := attest.PlatformInfo{TPM: "simulator", Simulated: s.simulated}
	if !s.simulated {
		info.TPM = DefaultTPMPath
	}
	kind := "hardware"
	if s.simulated {
		kind = "simulated"
	}
	if s.att.SNP != nil {
		info.SNP = kind
	}
	if s.att.TDX != nil {
		info.TDX = kind
	}
	if s.att.Azure != nil {
		info.Azure = kind
	}
	return info
}
