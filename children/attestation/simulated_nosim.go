//go:build nosim

package attestation

import (
	"fmt"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/proto/config"
)

func (s *Service) openSimulated(*config.AttestationSettings) error {
	return fmt.Errorf("%w: this cvmd was built with -tags nosim: no simulated platforms", attest.ErrUnsupportedPlatform)
}
