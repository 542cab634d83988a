package pid1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel's device-mapper control interface (/dev/mapper/control,
// linux/dm-ioctl.h): the five ioctls the scratch disk needs, without
// libdevmapper or udev. Tables name devices by "major:minor", so the stack
// needs no device nodes but the top one's.

// dmControl is the device-mapper control node (devtmpfs makes it).
const dmControl = "/dev/mapper/control"

// Sizes of struct dm_ioctl and struct dm_target_spec.
const (
	dmHeaderSize = 312
	dmSpecSize   = 40
)

// dmTarget is one line of a device-mapper table.
type dmTarget struct {
	Start, Length uint64 // in 512-byte sectors
	Type          string // "integrity", "crypt", "linear"
	Params        string
}

// dmDevice is a device-mapper device of ours.
type dmDevice struct {
	Name  string
	Major uint32
	Minor uint32
}

// Node is how a table names the device ("major:minor").
func (d dmDevice) Node() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// dmRequest builds a dm_ioctl buffer: the header (interface version 4.0,
// the device name, flags) followed by payload, in a buffer of at least
// size bytes so that the kernel has room for its answer.
func dmRequest(name string, flags uint32, targets int, payload []byte, size int) ([]byte, error) {
	if len(name) >= unix.DM_NAME_LEN {
		return nil, fmt.Errorf("device-mapper name %q is too long", name)
	}
	size = max(size, dmHeaderSize+len(payload))
	buf := make([]byte, size)
	ne := binary.NativeEndian
	ne.PutUint32(buf[0:], 4) // version 4.0.0: any 4.x kernel accepts it
	ne.PutUint32(buf[12:], uint32(size))
	ne.PutUint32(buf[16:], dmHeaderSize) // data_start
	ne.PutUint32(buf[20:], uint32(targets))
	ne.PutUint32(buf[28:], flags)
	copy(buf[48:48+unix.DM_NAME_LEN], name)
	copy(buf[dmHeaderSize:], payload)
	return buf, nil
}

// dmCall runs one device-mapper ioctl on a fresh control fd. The answer
// stays in buf.
func dmCall(what string, cmd uintptr, buf []byte) error {
	f, err := os.OpenFile(dmControl, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("device-mapper %s: %w", what, err)
	}
	defer f.Close()
	if err := dmIoctl(f.Fd(), cmd, buf); err != nil {
		return fmt.Errorf("device-mapper %s: %w", what, err)
	}
	return nil
}

// dmCreate makes an empty device-mapper device, loads targets into it and
// activates it. flags go with the table load (DM_SECURE_DATA_FLAG asks the
// kernel to wipe the buffer, which may hold key material).
func dmCreate(name string, flags uint32, targets ...dmTarget) (dmDevice, error) {
	buf, err := dmRequest(name, 0, 0, nil, 0)
	if err != nil {
		return dmDevice{}, err
	}
	if err := dmCall("create "+name, unix.DM_DEV_CREATE, buf); err != nil {
		return dmDevice{}, err
	}
	dev := binary.NativeEndian.Uint64(buf[40:])
	d := dmDevice{Name: name, Major: unix.Major(dev), Minor: unix.Minor(dev)}
	if err := dmReload(name, flags, targets...); err != nil {
		dmRemove(name)
		return dmDevice{}, err
	}
	return d, nil
}

// dmReload loads a new table into a device and makes it the live one (the
// kernel suspends the device around the swap).
func dmReload(name string, flags uint32, targets ...dmTarget) error {
	payload, err := dmTable(targets)
	if err != nil {
		return err
	}
	buf, err := dmRequest(name, flags, len(targets), payload, 0)
	if err != nil {
		return err
	}
	err = dmCall("loading the table of "+name, unix.DM_TABLE_LOAD, buf)
	clear(buf)
	clear(payload)
	if err != nil {
		return err
	}
	// DM_DEV_SUSPEND without DM_SUSPEND_FLAG is "resume": it swaps in the
	// table just loaded.
	buf, _ = dmRequest(name, 0, 0, nil, 0)
	return dmCall("resuming "+name, unix.DM_DEV_SUSPEND, buf)
}

// dmTable encodes targets as DM_TABLE_LOAD wants them: each struct
// dm_target_spec followed by its NUL-terminated parameters, 8-byte aligned,
// "next" being the offset from this spec to the next.
func dmTable(targets []dmTarget) ([]byte, error) {
	var out []byte
	for _, t := range targets {
		if len(t.Type) >= 16 || t.Type == "" {
			return nil, fmt.Errorf("device-mapper target type %q", t.Type)
		}
		if strings.ContainsRune(t.Params, 0) {
			return nil, errors.New("device-mapper target parameters contain a NUL byte")
		}
		n := (dmSpecSize + len(t.Params) + 1 + 7) &^ 7
		spec := make([]byte, n)
		ne := binary.NativeEndian
		ne.PutUint64(spec[0:], t.Start)
		ne.PutUint64(spec[8:], t.Length)
		ne.PutUint32(spec[20:], uint32(n))
		copy(spec[24:40], t.Type)
		copy(spec[dmSpecSize:], t.Params)
		out = append(out, spec...)
	}
	return out, nil
}

// dmStatus returns the status line of a device's first target: its
// run-time status, or with table its table line as the kernel holds it.
func dmStatus(name string, table bool) (string, error) {
	var flags uint32
	if table {
		flags = unix.DM_STATUS_TABLE_FLAG
	}
	for size := 16 << 10; size <= 1<<20; size *= 4 {
		buf, err := dmRequest(name, flags, 0, nil, size)
		if err != nil {
			return "", err
		}
		if err := dmCall("status of "+name, unix.DM_TABLE_STATUS, buf); err != nil {
			return "", err
		}
		ne := binary.NativeEndian
		if ne.Uint32(buf[28:])&unix.DM_BUFFER_FULL_FLAG != 0 {
			continue
		}
		if ne.Uint32(buf[20:]) == 0 {
			return "", fmt.Errorf("device-mapper status of %s: no target", name)
		}
		start := int(ne.Uint32(buf[16:])) + dmSpecSize
		if start >= len(buf) {
			return "", fmt.Errorf("device-mapper status of %s: answer out of the buffer", name)
		}
		s, _, _ := strings.Cut(string(buf[start:]), "\x00")
		return s, nil
	}
	return "", fmt.Errorf("device-mapper status of %s: answer larger than 1 MiB", name)
}

// dmRemove removes a device (it must not be open or mounted).
func dmRemove(name string) error {
	buf, err := dmRequest(name, 0, 0, nil, 0)
	if err != nil {
		return err
	}
	return dmCall("removing "+name, unix.DM_DEV_REMOVE, buf)
}
