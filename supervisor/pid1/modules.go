package pid1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Module is one line of the load-order file.
type Module struct {
	// Path is relative to the kernel release's modules directory.
	Path string
	// Optional modules may fail to load without it being an error: sev-guest
	// has no device outside an SEV-SNP guest.
	Optional bool
	// Scratch modules (dm-crypt, dm-integrity, ext4, AES-GCM...) are needed
	// only for a scratch disk: they are loaded when the VM has one
	// (LoadScratchModules), not at boot.
	Scratch bool
}

// ParseModuleList reads a load-order file: one module path a line, relative
// to the release directory, optionally followed by the words "optional"
// and "scratch". Blank lines and lines starting with # are skipped. A path
// that is absolute or climbs out of the directory is refused.
func ParseModuleList(r io.Reader) ([]Module, error) {
	var mods []Module
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		m := Module{Path: f[0]}
		for _, w := range f[1:] {
			switch {
			case w == "optional" && !m.Optional:
				m.Optional = true
			case w == "scratch" && !m.Scratch:
				m.Scratch = true
			default:
				return nil, fmt.Errorf("pid1: module list line %d: want \"path [optional] [scratch]\", got %q", line, sc.Text())
			}
		}
		if !filepath.IsLocal(m.Path) || !strings.HasSuffix(m.Path, ".ko") {
			return nil, fmt.Errorf("pid1: module list line %d: path %q is not a relative .ko path", line, m.Path)
		}
		mods = append(mods, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pid1: reading module list: %w", err)
	}
	return mods, nil
}

// LoadScratchModules loads the modules only a scratch disk needs.
func LoadScratchModules(log *slog.Logger) error {
	start := time.Now()
	n, err := loadModules(log, ModulesDir, true)
	log.Info("pid1: scratch disk modules loaded", "count", n, "ms", time.Since(start).Milliseconds())
	return err
}

// loadModules loads, in order, the modules listed for the running kernel
// whose Scratch is scratch. It returns how many were loaded (or already
// present). A missing list is not an error: the kernel may have everything
// built in.
func loadModules(log *slog.Logger, root string, scratch bool) (int, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return 0, fmt.Errorf("pid1: uname: %w", err)
	}
	dir := filepath.Join(root, unix.ByteSliceToString(u.Release[:]))
	f, err := os.Open(filepath.Join(dir, ModulesList))
	if errors.Is(err, os.ErrNotExist) {
		log.Info("pid1: no module list", "dir", dir)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("pid1: opening module list: %w", err)
	}
	mods, err := ParseModuleList(f)
	f.Close()
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, m := range mods {
		if m.Scratch != scratch {
			continue
		}
		err := loadModule(filepath.Join(dir, m.Path))
		switch {
		case err == nil:
			n++
		case m.Optional:
			log.Info("pid1: optional module not loaded", "module", m.Path, "err", err)
		default:
			log.Warn("pid1: module not loaded", "module", m.Path, "err", err)
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// loadModule loads one module file. A module that is already loaded (or
// built in under the same name) counts as loaded.
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("pid1: loading module %s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	for {
		err = unix.FinitModule(int(f.Fd()), "", 0)
		if err != unix.EINTR {
			break
		}
	}
	if err == nil || err == unix.EEXIST {
		return nil
	}
	return fmt.Errorf("pid1: loading module %s: %w", filepath.Base(path), os.NewSyscallError("finit_module", err))
}
