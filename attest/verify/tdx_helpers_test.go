package verify

import (
	"testing"

	"github.com/cvmd/cvmd/attest/sim"
)

func mustSimRoot(t *testing.T) []byte {
	s, err := sim.NewTDX(sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.RootPEM()
}
