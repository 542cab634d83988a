// Package pid1 is what cvmd does as PID 1, before and around the
// supervisor proper.
//
// Run is PID 1 itself (init.go): in the VM it mounts the API file systems,
// moves an initramfs root into a tmpfs (mounts.go), loads the image's
// kernel modules, seals its binary against the children (CVE-2019-5736),
// brings up the guest's devices, then starts the supervisor proper as its
// only managed child, reaps every orphan, restarts the proper if it dies,
// and turns SIGTERM/SIGINT/SIGPWR into one orderly shutdown and power-off.
// RunDev is the dev launcher that makes a workstation process PID 1 of new
// PID and mount namespaces.
//
// The device bring-up (LoadModules and Prepare) is image glue, not policy:
// it loads the kernel modules the image ships (virtio, 9p, overlay, vsock,
// the ACPI power button, sev-guest), mounts the manager's 9p shares
// (env_share → /etc/cocos, certs_share → /etc/certs), configures eth0 for
// qemu's user network, turns a press of the ACPI power button (qemu's
// system_powerdown) into SIGPWR for the calling process, and puts the
// computation's files on the scratch disk when the VM has one: a fresh
// dm-crypt (AES-GCM) over dm-integrity volume each boot, keyed in the guest
// (scratch.go), whose choice the supervisor measures (storage.go). PID 1 calls
// Prepare once, after /proc, /sys and /dev are mounted and after the root
// has been moved to its final place, so that the 9p mounts land in the
// root the children see. Every step skips what is absent (no module list,
// no share, no eth0), but it changes the machine's network and mounts:
// never call it on a workstation.
//
// pid1 knows nothing of the children or the child table: the supervisor
// (package supervisor) passes what it needs in Config. It imports
// libcontainer's exeseal, x/sys and attest (the storage fact's type); the
// supervisor (PID 1, and the supervisor proper for the storage it measures
// and sizes its limits by: StorageOf, BudgetFor, WatchIntegrity), the
// algorithm sandboxes (MakeQuotaDir), images/ (the boot probe, the scratch
// benchmark) and tests/vm import it.
package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths used by Prepare, relative to the root of the running system.
const (
	// ModulesDir holds one directory per kernel release; images/ writes the
	// modules there with a load-order file named ModulesList.
	ModulesDir = "/lib/modules"
	// ModulesList is the file, inside ModulesDir/<release>, listing the
	// modules to load, one path relative to that directory a line, in order.
	ModulesList = "modules.cvmd"
	// EnvDir is where the env_share 9p share is mounted (Cocos's /etc/cocos).
	EnvDir = "/etc/cocos"
	// CertsDir is where the certs_share 9p share is mounted (Cocos's /etc/certs).
	CertsDir = "/etc/certs"
)

// Shares maps the 9p mount tags the manager gives the VM to the directories
// they are mounted on, as Cocos's image does.
var Shares = map[string]string{
	"env_share":   EnvDir,
	"certs_share": CertsDir,
}

// LoadModules loads the image's kernel modules (the list in
// ModulesDir/<release>). PID 1 runs it before anything that may need one
// (the overlay it seals its binary with, see supervisor/pid1.go) and before
// Prepare; it starts no goroutine, so it may run in a process that then
// re-executes itself.
func LoadModules(log *slog.Logger) error {
	start := time.Now()
	log.Info("pid1: start", "kernel_uptime_s", fmt.Sprintf("%.3f", uptime()), "init_start_s", fmt.Sprintf("%.2f", initStart()))
	n, err := loadModules(log, ModulesDir, false)
	log.Info("pid1: modules loaded", "count", n, "ms", time.Since(start).Milliseconds())
	return err
}

// Prepare mounts securityfs and loads the image's IMA policy (ima.go), mounts
// the 9p shares that are present, configures the network, starts watching
// the power button, and gives StateRoot its storage: the scratch disk as a
// fresh encrypted volume, or memory (SetupStorage; the modules are
// LoadModules' part). Every
// step is attempted even when an earlier one failed; the error joins what
// went wrong, each part naming its object. The caller logs it and carries
// on: a VM whose share failed may still be configured from the kernel
// command line, and PID 1 must not die.
//
// The power-button watcher goroutine lives as long as the process: it sends
// SIGPWR to the calling process when the button is pressed, which the
// supervisor treats as an orderly shutdown. In test images only (see
// DebugMarker) it also serves the debug port. Call it in the process that
// stays PID 1.
func Prepare(log *slog.Logger) error {
	start := time.Now()
	cmd := readCmdline("/proc/cmdline")
	var errs []error
	if err := setupIMA(log); err != nil {
		errs = append(errs, err)
	}
	if err := mountShares(log, Shares); err != nil {
		errs = append(errs, err)
	}
	if err := configureNetwork(log, cmd.Get("cvmd.net")); err != nil {
		errs = append(errs, err)
	}
	if err := watchPowerButton(log, os.Getpid()); err != nil {
		errs = append(errs, err)
	}
	if err := startDebugPort(log); err != nil {
		errs = append(errs, err)
	}
	// Last: formatting the scratch disk takes a while, and the debug port
	// should answer meanwhile.
	SetupStorage(log, cmd)
	log.Info("pid1: done", "ms", time.Since(start).Milliseconds())
	return errors.Join(errs...)
}

// uptime returns the seconds since the kernel started (CLOCK_BOOTTIME), the
// figure images/ reports as the kernel's part of the boot.
func uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return -1
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// initStart returns when the kernel executed /init, in seconds since the
// kernel started: the timestamp of its "Run /init as init process" record in
// the kernel log (kept in the ring buffer even with quiet). -1 if unknown.
func initStart() float64 {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1
	}
	defer f.Close()
	buf := make([]byte, 8192)
	for {
		// One read returns one record; EAGAIN at the end of the buffer.
		n, err := f.Read(buf)
		if err != nil {
			return -1
		}
		r, err := ParseKmsg(string(buf[:n]))
		if err == nil && strings.HasPrefix(r.Message, "Run ") && strings.HasSuffix(r.Message, " as init process") {
			return float64(r.Micros) / 1e6
		}
	}
}

// KmsgRecord is one /dev/kmsg record.
type KmsgRecord struct {
	Seq, Micros uint64
	Message     string
}

// ParseKmsg parses one /dev/kmsg record: "prio,seq,usec,flags[,...];message"
// followed by optional continuation lines (" KEY=value"), which are dropped.
func ParseKmsg(rec string) (KmsgRecord, error) {
	head, msg, ok := strings.Cut(rec, ";")
	if !ok {
		return KmsgRecord{}, fmt.Errorf("pid1: kmsg record has no ';'")
	}
	f := strings.Split(head, ",")
	if len(f) < 4 {
		return KmsgRecord{}, fmt.Errorf("pid1: kmsg header %q has %d fields, want at least 4", head, len(f))
	}
	seq, err1 := strconv.ParseUint(f[1], 10, 64)
	usec, err2 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return KmsgRecord{}, fmt.Errorf("pid1: kmsg header %q: bad sequence or time", head)
	}
	msg, _, _ = strings.Cut(msg, "\n")
	return KmsgRecord{Seq: seq, Micros: usec, Message: msg}, nil
}

// Cmdline is the kernel command line split into parameters.
type Cmdline []string

// ParseCmdline splits a kernel command line as the kernel does: on spaces,
// with double quotes grouping a value that contains spaces (the quotes are
// removed).
func ParseCmdline(s string) Cmdline {
	var out Cmdline
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// Get returns the value of the last key=value parameter named key, or "" if
// there is none.
func (c Cmdline) Get(key string) string {
	v := ""
	for _, p := range c {
		if k, val, ok := strings.Cut(p, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func readCmdline(path string) Cmdline {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return ParseCmdline(string(b))
}
