package table

import (
	"strings"
	"testing"

	"github.com/cvmd/cvmd/proto/config"
)

// CVMD_SIMULATED_PLATFORM chooses what a simulated attestation child
// stands for; it is ignored without simulation, and an unknown value is
// refused naming the variable.
func TestSimulatedPlatform(t *testing.T) {
	for _, tc := range []struct {
		platform  string
		simulated bool
		want      string // SimulateSnp/Tdx/Azure as text; "" for hardware
		err       string
	}{
		{"", true, "snp", ""},
		{"snp", true, "snp", ""},
		{"tdx", true, "tdx", ""},
		{"azure-snp", true, "azure snp", ""},
		{"azure-tdx", true, "azure tdx", ""},
		{"azure-tdx", false, "", ""},
		{"sgx", true, "", SimulatedPlatformVar},
	} {
		mode := AttestationAuto
		if tc.simulated {
			mode = AttestationSimulated
		}
		in := &SettingsInput{Attestation: mode, Environment: func() (map[string]string, string, error) {
			return map[string]string{SimulatedPlatformVar: tc.platform}, "test", nil
		}}
		m, err := attestationSettings(in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error naming %s", tc.platform, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		s := m.(*config.AttestationSettings)
		got := ""
		switch {
		case s.GetSimulateSnp():
			got = "snp"
		case s.GetSimulateTdx():
			got = "tdx"
		case s.GetSimulateAzure() != "":
			got = "azure " + s.GetSimulateAzure()
		}
		if got != tc.want || (s.GetMode() == config.AttestationSettings_SIMULATED) != tc.simulated {
			t.Errorf("%q simulated=%v: %v, want %q", tc.platform, tc.simulated, s, tc.want)
		}
	}
}
