package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// tagsDir is where the 9p virtio transport lists its devices; each has a
// mount_tag file holding the tag qemu was given (-virtfs ...,mount_tag=T).
const tagsDir = "/sys/bus/virtio/drivers/9pnet_virtio"

// mountTags returns the 9p mount tags the VM was given.
func mountTags(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pid1: listing 9p devices: %w", err)
	}
	var tags []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "mount_tag"))
		if err != nil {
			continue // not a device entry (bind, uevent, ...)
		}
		tags = append(tags, strings.TrimRight(string(b), "\x00\n"))
	}
	sort.Strings(tags)
	return tags, nil
}

// mountShares mounts each known 9p share that the VM has, read-only and
// without devices, setuid or exec: the manager's files are data to the guest.
func mountShares(log *slog.Logger, shares map[string]string) error {
	tags, err := mountTags(tagsDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, tag := range tags {
		dir, ok := shares[tag]
		if !ok {
			log.Warn("pid1: ignoring unknown 9p share", "tag", tag)
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("pid1: making mount point for 9p share %s: %w", tag, err))
			continue
		}
		const flags = unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC
		if err := unix.Mount(tag, dir, "9p", flags, "trans=virtio,version=9p2000.L,msize=262144"); err != nil {
			errs = append(errs, fmt.Errorf("pid1: mounting 9p share %s on %s: %w", tag, dir, err))
			continue
		}
		log.Info("pid1: mounted 9p share", "tag", tag, "dir", dir)
	}
	return errors.Join(errs...)
}
