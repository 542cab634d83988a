package pid1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Input event constants from linux/input-event-codes.h.
const (
	evKey      = 0x01
	keyPower   = 116
	eventSize  = 24 // struct input_event on 64-bit: timeval (16), type, code (2+2), value (4)
	inputClass = "/sys/class/input"
)

// InputEvent is one struct input_event, without its timestamp.
type InputEvent struct {
	Type, Code uint16
	Value      int32
}

// ParseInputEvent decodes one 24-byte struct input_event (64-bit layout).
func ParseInputEvent(b []byte) (InputEvent, error) {
	if len(b) != eventSize {
		return InputEvent{}, fmt.Errorf("pid1: input event is %d bytes, want %d", len(b), eventSize)
	}
	return InputEvent{
		Type:  binary.NativeEndian.Uint16(b[16:]),
		Code:  binary.NativeEndian.Uint16(b[18:]),
		Value: int32(binary.NativeEndian.Uint32(b[20:])),
	}, nil
}

// IsPowerPress reports whether e is the power key going down.
func (e InputEvent) IsPowerPress() bool { return e.Type == evKey && e.Code == keyPower && e.Value == 1 }

// powerButtons returns the event device numbers named "Power Button" (the
// ACPI button driver's LNXPWRBN and PNP0C0C devices).
func powerButtons(class string) []string {
	ents, _ := os.ReadDir(class)
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "event") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(class, e.Name(), "device", "name"))
		if err == nil && strings.TrimSpace(string(b)) == "Power Button" {
			out = append(out, e.Name())
		}
	}
	return out
}

// openEventDevice opens /dev/input/NAME, creating the node from sysfs when
// /dev is not a devtmpfs that already has it.
func openEventDevice(name string) (*os.File, error) {
	path := filepath.Join("/dev/input", name)
	f, err := os.Open(path)
	if !errors.Is(err, os.ErrNotExist) {
		return f, err
	}
	b, err := os.ReadFile(filepath.Join(inputClass, name, "dev"))
	if err != nil {
		return nil, err
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return nil, fmt.Errorf("bad device number %q", b)
	}
	if err := os.MkdirAll("/dev/input", 0o755); err != nil {
		return nil, err
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(ma), uint32(mi)))); err != nil && err != unix.EEXIST {
		return nil, fmt.Errorf("mknod %s: %w", path, err)
	}
	return os.Open(path)
}

// watchPowerButton starts one goroutine per power-button device that sends
// SIGPWR to pid when the button is pressed. The goroutines run until the
// process ends (PID 1 never returns; it powers the machine off), which is
// why nothing waits for them. No button is not an error: a VM may have no
// ACPI.
func watchPowerButton(log *slog.Logger, pid int) error {
	var errs []error
	for _, name := range powerButtons(inputClass) {
		f, err := openEventDevice(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("pid1: opening power button %s: %w", name, err))
			continue
		}
		log.Info("pid1: watching power button", "device", name)
		go func() {
			defer f.Close()
			err := watchEvents(f, func() {
				log.Info("pid1: power button pressed, sending SIGPWR", "pid", pid)
				unix.Kill(pid, unix.SIGPWR)
			})
			log.Warn("pid1: power button watcher ended", "device", name, "err", err)
		}()
	}
	return errors.Join(errs...)
}

// watchEvents reads input events from r and calls press for each power-key
// press, until r fails.
func watchEvents(r io.Reader, press func()) error {
	buf := make([]byte, eventSize)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		if e, _ := ParseInputEvent(buf); e.IsPowerPress() {
			press()
		}
	}
}
