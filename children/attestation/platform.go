package attestation

// Which evidence providers this VM has, decided in one place: the
// attestation mode (ModeSettings turns its name into settings; the
// supervisor reads it from its flags, the kernel command line or Cocos's
// environment file), then what the hardware offers. A VM without the
// platform it needs is a fact to report, not a failure to restart: the
// child starts, says "no platform: <what is missing>" and refuses evidence
// with that reason.

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/proto/config"
)

// Attestation modes, as named on the kernel command line, in Cocos's
// environment file and by `cvmd supervise --attestation`.
const (
	// ModeAuto uses whatever of TPM, SEV-SNP and TDX the VM has.
	ModeAuto = "auto"
	// ModeSimulated is the labelled simulation for development: the TPM
	// simulator and a simulated SEV-SNP signed by a test-only chain.
	ModeSimulated = "simulated"
)

// forcedPlatforms are the modes that force one platform, and what each
// needs of the VM.
var forcedPlatforms = map[string]struct {
	tpm, snp, tdx, azure bool
	atls                 attest.Platform
}{
	"vtpm":     {tpm: true, atls: attest.VTPM},
	"snp":      {snp: true, atls: attest.SNP},
	"snp-vtpm": {tpm: true, snp: true, atls: attest.SNPvTPM},
	"tdx":      {tdx: true, atls: attest.TDX},
	"azure":    {tpm: true, azure: true, atls: attest.Azure},
}

// Modes lists every mode name, for error messages and help.
const Modes = "auto, simulated, vtpm, snp, snp-vtpm, tdx or azure"

// ValidMode reports whether mode names an attestation mode.
func ValidMode(mode string) bool {
	_, forced := forcedPlatforms[mode]
	return forced || mode == ModeAuto || mode == ModeSimulated
}

// ModeSettings returns the child's settings for an attestation mode: "" or
// "auto" detects, "simulated" simulates (TPM simulator and SEV-SNP), a
// platform name forces that platform. Any other name is passed on as a
// forced platform the child does not know, so the VM has no platform and
// says why: a mistyped mode never silently weakens attestation.
func ModeSettings(mode string) *config.AttestationSettings {
	switch mode {
	case "", ModeAuto:
		return &config.AttestationSettings{}
	case ModeSimulated:
		return &config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateSnp: true}
	}
	return &config.AttestationSettings{Force: mode}
}

// openPlatform opens the TPM and TEE report interfaces st asks for. It
// fails only for settings that contradict each other or for a device that
// is present but does not work; a missing platform sets s.noPlatform.
func (s *Service) openPlatform(st *config.AttestationSettings) error {
	switch st.GetMode() {
	case config.AttestationSettings_SIMULATED:
		if st.GetSimulateSnp() && st.GetSimulateTdx() {
			return errors.New("simulate_snp and simulate_tdx: a VM is SEV-SNP or TDX, not both")
		}
		if st.GetForce() != "" {
			return errors.New("force needs mode AUTO or HARDWARE, not SIMULATED")
		}
		s.simulated, s.mode = true, ModeSimulated
		return s.openSimulated(st)
	case config.AttestationSettings_AUTO, config.AttestationSettings_HARDWARE:
		if st.GetSimulateSnp() || st.GetSimulateTdx() || st.GetSimulateAzure() != "" {
			return errors.New("simulate_snp, simulate_tdx and simulate_azure need mode SIMULATED")
		}
		s.mode = ModeAuto
		if st.GetForce() != "" {
			s.mode = st.GetForce()
		}
		return s.openHardware(st)
	}
	return fmt.Errorf("unknown mode %v", st.GetMode())
}

// openHardware opens whatever of TPM, SEV-SNP and TDX the VM has, then
// checks it against the mode.
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
	s.noPlatform = s.missing(path)
	return nil
}

// missing says what the mode needs that the VM lacks ("" when nothing).
func (s *Service) missing(tpmPath string) string {
	noTPM := "no TPM at " + tpmPath
	const noSNP = "no SEV-SNP report interface (configfs-tsm or /dev/sev-guest)"
	const noTDX = "no TDX report interface (configfs-tsm or /dev/tdx_guest)"
	if s.mode == ModeAuto {
		if s.tpm == nil && s.att.SNP == nil && s.att.TDX == nil {
			return noTPM + ", " + noSNP + ", " + noTDX
		}
		return ""
	}
	need, ok := forcedPlatforms[s.mode]
	if !ok {
		return fmt.Sprintf("attestation mode %q is not one of %s", s.mode, Modes)
	}
	var lack []string
	if need.tpm && s.tpm == nil {
		lack = append(lack, noTPM)
	}
	if need.azure && s.tpm != nil && s.att.Azure == nil {
		lack = append(lack, "no Azure HCL report in the TPM (NV index 0x01400001)")
	}
	if need.snp && s.att.SNP == nil {
		lack = append(lack, noSNP)
	}
	if need.tdx && s.att.TDX == nil {
		lack = append(lack, noTDX)
	}
	if len(lack) == 0 {
		return ""
	}
	return fmt.Sprintf("mode %s needs what this VM lacks: %s", s.mode, strings.Join(lack, ", "))
}

// NoPlatform returns what the VM lacks for its attestation mode ("" when
// evidence can be produced).
func (s *Service) NoPlatform() string { return s.noPlatform }

// atlsPlatform is the platform aTLS evidence (and the ingress's) is made
// for: the forced one, else the strongest the VM has.
func (s *Service) atlsPlatform() attest.Platform {
	if need, ok := forcedPlatforms[s.mode]; ok {
		return need.atls
	}
	switch {
	case s.att.SNP != nil && s.tpm != nil:
		return attest.SNPvTPM
	case s.att.SNP != nil:
		return attest.SNP
	case s.att.TDX != nil:
		return attest.TDX
	}
	return attest.VTPM
}

// platformInfo is the data of the first PCR 15 event: what produces evidence.
func (s *Service) platformInfo() attest.PlatformInfo {
	info := attest.PlatformInfo{TPM: "simulator", Simulated: s.simulated, NoPlatform: s.noPlatform}
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
