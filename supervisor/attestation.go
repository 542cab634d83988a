package supervisor

import (
	"log/slog"

	"github.com/cvmd/cvmd/supervisor/table"
)

// The attestation mode: PID 1 gets no arguments, so in the VM it comes from
// Cocos's environment (table.AttestationVar on the kernel command line,
// which is measured and wins, or in the environment file); an explicit
// --attestation wins over both. Whatever it is, it is part of the measured
// table (table.Table.Attestation). A value that names no mode is kept as
// it is: the attestation child then reports that the VM has no platform,
// naming the value, and everything but attestation keeps working.

// defaultAttestation is the mode when nothing chooses one.
func (o *options) defaultAttestation() string {
	if o.dev {
		return table.AttestationSimulated
	}
	return table.AttestationAuto
}

// attestationMode returns the mode in force and where it came from.
func (o *options) attestationMode(env func() (map[string]string, string, error), log *slog.Logger) (mode, source string) {
	if o.attestation != "" {
		return o.attestation, "--attestation"
	}
	vars, src, err := env()
	if err != nil {
		// Unreadable: the default, and say so (the link reports the same file).
		log.Error("environment not read: attestation mode "+o.defaultAttestation(), "env", src, "err", err)
		return o.defaultAttestation(), "default"
	}
	if v, ok := vars[table.AttestationVar]; ok && v != "" {
		if !table.ValidAttestation(v) {
			log.Error("unknown attestation mode: the VM will have no attestation platform",
				"var", table.AttestationVar, "value", v, "want", table.AttestationModes, "env", src)
		}
		return v, table.AttestationVar + " (" + src + " or the kernel command line)"
	}
	return o.defaultAttestation(), "default"
}
