package supervisor

import (
	"errors"
	"log/slog"
	"testing"
)

// The attestation mode: --attestation wins, then CVMD_ATTESTATION in the
// environment (kernel command line or file), then the default; a value
// that is no mode is kept (the attestation child reports it).
func TestAttestationMode(t *testing.T) {
	env := func(v string) func() (map[string]string, string, error) {
		return func() (map[string]string, string, error) {
			if v == "" {
				return map[string]string{}, "/etc/cocos/environment", nil
			}
			return map[string]string{"CVMD_ATTESTATION": v}, "/etc/cocos/environment", nil
		}
	}
	broken := func() (map[string]string, string, error) {
		return nil, "/etc/cocos/environment", errors.New("line 3: want KEY=VALUE")
	}
	tests := []struct {
		name string
		o    options
		env  func() (map[string]string, string, error)
		want string
	}{
		{"VM default", options{}, env(""), "auto"},
		{"dev default", options{dev: true}, env(""), "simulated"},
		{"from the environment", options{}, env("vtpm"), "vtpm"},
		{"the flag wins", options{attestation: "snp"}, env("vtpm"), "snp"},
		{"no mode, kept", options{}, env("simualted"), "simualted"},
		{"environment unreadable", options{}, broken, "auto"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, _ := tc.o.attestationMode(tc.env, slog.New(slog.DiscardHandler)); got != tc.want {
				t.Fatalf("mode %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := parseFlags([]string{"--attestation", "simualted"}, nil); err == nil {
		t.Fatal("--attestation simualted accepted")
	}
	o, err := parseFlags([]string{"--attestation", "snp-vtpm"}, nil)
	if err != nil || o.table().Attestation != "snp-vtpm" {
		t.Fatalf("--attestation snp-vtpm: %v, table says %q", err, o.table().Attestation)
	}
}
