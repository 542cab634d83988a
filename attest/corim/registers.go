package corim

import "fmt"

// Measurement keys of cvmd's profile: what a uint mkey names in each
// environment (docs/attestation.md lists them). Cocos's CoRIMs key their
// measurements with random UUIDs, which name nothing: verify compares those
// with the launch measurement (SNP MEASUREMENT, TDX MRTD), as Cocos does.
const (
	// SEV-SNP (vendor AMD, model SEV-SNP).
	SNPMeasurement = 0 // MEASUREMENT, sha-384 digest; an SVN here is the guest SVN
	SNPHostData    = 1 // HOST_DATA, raw value (32 bytes)
	SNPPolicy      = 2 // guest POLICY, raw value (8 bytes, little-endian), exact
	SNPReportedTCB = 3 // REPORTED_TCB: a min-svn, compared component by component

	// TDX (vendor Intel, model TDX): sha-384 digests of the registers, raw
	// values of the 8-byte attribute words (little-endian, as in the quote).
	TDXMRTD          = 0
	TDXRTMR0         = 1 // RTMR0..RTMR3 are 1..4
	TDXMRSEAM        = 5
	TDXMRConfigID    = 6
	TDXMROwner       = 7
	TDXMROwnerConfig = 8
	TDXAttributes    = 9
	TDXXFAM          = 10

	// vTPM (vendor TCG, model vTPM): the key is the PCR number; a sha-256
	// digest pins the SHA-256 bank, a sha-384 digest the SHA-384 bank.

	// cvmd (vendor cvmd, model cvmd).
	CVMDChildTable = 0 // the supervisor's child table, sha-256 (cvmd supervise --print-sandbox)
	CVMDManifest   = 1 // the last computation manifest in PCR 16's log, sha3-256
)

// RegisterName names a measurement key of model, for messages.
func RegisterName(model string, key uint64) string {
	switch model {
	case ModelSNP:
		switch key {
		case SNPMeasurement:
			return "MEASUREMENT"
		case SNPHostData:
			return "HOST_DATA"
		case SNPPolicy:
			return "POLICY"
		case SNPReportedTCB:
			return "REPORTED_TCB"
		}
	case ModelTDX:
		switch {
		case key == TDXMRTD:
			return "MRTD"
		case key >= TDXRTMR0 && key < TDXRTMR0+4:
			return fmt.Sprintf("RTMR%d", key-TDXRTMR0)
		case key == TDXMRSEAM:
			return "MRSEAM"
		case key == TDXMRConfigID:
			return "MRCONFIGID"
		case key == TDXMROwner:
			return "MROWNER"
		case key == TDXMROwnerConfig:
			return "MROWNERCONFIG"
		case key == TDXAttributes:
			return "TD_ATTRIBUTES"
		case key == TDXXFAM:
			return "XFAM"
		}
	case ModelVTPM:
		return fmt.Sprintf("PCR %d", key)
	case ModelCVMD:
		switch key {
		case CVMDChildTable:
			return "child table"
		case CVMDManifest:
			return "manifest"
		}
	}
	return fmt.Sprintf("%s key %d", model, key)
}
