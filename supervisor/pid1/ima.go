package pid1

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// IMA (the kernel's integrity measurement architecture) measures every
// executed file into PCR 10. PID 1 mounts securityfs, where the kernel
// publishes the measurement list and the TPM's event log, and loads the
// image's IMA policy before any child runs, so each child's and each
// algorithm's executable is in the list a verifier replays against PCR 10.

// Paths of IMA.
const (
	SecurityFS = "/sys/kernel/security"
	// IMAPolicyFile is the image's policy (images/build.sh writes it).
	IMAPolicyFile = "/etc/ima/ima-policy"
	imaPolicy     = SecurityFS + "/ima/policy"
)

// setupIMA mounts securityfs and loads IMAPolicyFile, if the image has one.
// The kernel accepts one policy write (CONFIG_IMA_WRITE_POLICY is off): it
// replaces the built-in policy, which ignores tmpfs, where everything of
// this VM lives.
func setupIMA(log *slog.Logger) error {
	if !mounted(SecurityFS) {
		if err := unix.Mount("securityfs", SecurityFS, "securityfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting securityfs on %s: %w", SecurityFS, err)
		}
	}
	policy, err := os.ReadFile(IMAPolicyFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading IMA policy: %w", err)
	}
	if _, err := os.Stat(imaPolicy); err != nil {
		return fmt.Errorf("IMA policy %s not loaded: the kernel has no IMA policy file (%v)", IMAPolicyFile, err)
	}
	// One write of the whole policy: the kernel parses it rule by rule and
	// refuses it all on the first bad rule.
	if err := os.WriteFile(imaPolicy, policy, 0); err != nil {
		return fmt.Errorf("loading IMA policy %s: %w", IMAPolicyFile, err)
	}
	log.Info("pid1: IMA policy loaded", "rules", bytes.Count(policy, []byte("measure")))
	return nil
}
