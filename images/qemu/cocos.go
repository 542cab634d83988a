package qemu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Machine is the shape of the VM Start boots.
type Machine int

const (
	// MachineCvmd is cvmd's own VM: direct kernel boot without firmware,
	// -nodefaults, a restricted user network with forwards to 127.0.0.1
	// only, read-only 9p shares, virtio-rng, the serial console.
	MachineCvmd Machine = iota
	// MachineCocos is the VM Cocos's manager (its cmd/manager, SEV and TDX
	// off) makes, option for option:
	//
	//	qemu-system-x86_64 -machine q35 -cpu EPYC -smp 4,maxcpus=64
	//	  -m 2048M,slots=5,maxmem=30G
	//	  -drive if=pflash,format=raw,unit=0,file=OVMF_CODE.fd,readonly=on
	//	  -drive if=pflash,format=raw,unit=1,file=OVMF_VARS-<id>.fd
	//	  -netdev user,id=vmnic-<id>,hostfwd=tcp::PORT-:7002
	//	  -device virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=vmnic-<id>,addr=0x2,romfile=
	//	  -kernel vmlinuz -append "quiet console=null" -initrd initramfs
	//	  -nographic -monitor pty
	//	  -fsdev local,id=cert_fs,path=DIR1,security_model=mapped -device virtio-9p-pci,fsdev=cert_fs,mount_tag=certs_share
	//	  -fsdev local,id=env_fs,path=DIR2,security_model=mapped -device virtio-9p-pci,fsdev=env_fs,mount_tag=env_share
	//
	// under TCG (-accel tcg and, on the kernel command line, no_timer_check,
	// which a KVM guest assumes by itself, are the only additions, for this
	// host without KVM). The hostfwd listens on every address and the user network is
	// not restricted, so it needs Config.NetNS: a namespace with only
	// loopback, where the guest reaches the manager at CocosHostAddr.
	// Config.TPM adds swtpm as cvmd's own VM has it (Cocos's manager has
	// no vTPM option for a plain VM), DebugPort a test image's debug port,
	// and a QMP monitor on an inherited socket is added for Powerdown;
	// the manager itself stops a VM with SIGTERM (VM.Terminate).
	// ManagerAddr (guestfwd) is not part of it.
	MachineCocos
)

// CocosHostAddr is the host as a MachineCocos guest reaches it: qemu's user
// network gateway, which qemu connects to the loopback of its own network
// namespace. A manager listening on 127.0.0.1:PORT there is
// CocosHostAddr:PORT in the guest's environment file.
const CocosHostAddr = "10.0.2.2"

// CocosOptions are what MachineCocos takes beyond Config.
type CocosOptions struct {
	// CPU is qemu's -cpu; "" means EPYC, the manager's default ("max" is
	// what the reporter used).
	CPU string
	// MaxCPUs is -smp's maxcpus; 0 means 64.
	MaxCPUs int
	// Slots and MaxMem are -m's memory hot-plug slots and maximum; 0 and ""
	// mean 5 and 30G.
	Slots  int
	MaxMem string
	// OVMFCode is the firmware; "" means /usr/share/OVMF/OVMF_CODE.fd
	// (Debian's ovmf, which scripts/deps.sh vm installs). OVMFVars is the
	// variable store copied per VM into Config.Dir, as the manager copies
	// it; "" means /usr/share/OVMF/OVMF_VARS.fd.
	OVMFCode, OVMFVars string
	// Cmdline is the kernel command line; "" means the manager's default,
	// "quiet console=null" (no console at all: the serial log then holds
	// only the firmware's output). Config.Append is added to it.
	Cmdline string
	// ID names the VM's devices and variable store as the manager's VM id
	// does; "" means "cvm".
	ID string
}

// checkCocos refuses what MachineCocos cannot be.
func (cfg *Config) checkCocos() error {
	switch {
	case cfg.NetNS == nil:
		return errors.New("qemu: MachineCocos forwards a port on every address and leaves the user network open: it needs a NetNS")
	case cfg.ManagerAddr != "":
		return errors.New("qemu: MachineCocos has no guestfwd: the guest reaches the manager at " + CocosHostAddr)
	case cfg.Accel != "" && cfg.Accel != "tcg" && cfg.Accel != "kvm":
		return fmt.Errorf("qemu: accelerator %q", cfg.Accel)
	}
	return nil
}

// cocosArgs is the command line of MachineCocos (see there), without QMP.
func cocosArgs(cfg Config) ([]string, error) {
	o := cfg.Cocos
	if o.CPU == "" {
		o.CPU = "EPYC"
	}
	if o.MaxCPUs == 0 {
		o.MaxCPUs = 64
	}
	if o.Slots == 0 {
		o.Slots = 5
	}
	if o.MaxMem == "" {
		o.MaxMem = "30G"
	}
	if o.OVMFCode == "" {
		o.OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	}
	if o.OVMFVars == "" {
		o.OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
	}
	if o.Cmdline == "" {
		o.Cmdline = "quiet console=null"
	}
	if o.ID == "" {
		o.ID = "cvm"
	}
	if _, err := os.Stat(o.OVMFCode); err != nil {
		return nil, fmt.Errorf("qemu: OVMF firmware (Debian's ovmf, scripts/deps.sh vm): %w", err)
	}
	vars := filepath.Join(cfg.Dir, "OVMF_VARS-"+o.ID+".fd")
	if err := copyFile(o.OVMFVars, vars); err != nil {
		return nil, fmt.Errorf("qemu: OVMF variable store: %w", err)
	}
	// The manager always gives both shares; an empty directory when the
	// test has nothing to share.
	shares := map[string]string{"cert_fs": cfg.CertsDir, "env_fs": cfg.EnvDir}
	for id, dir := range shares {
		if dir == "" {
			dir = filepath.Join(cfg.Dir, id)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("qemu: share %s: %w", id, err)
			}
			shares[id] = dir
		}
		if strings.ContainsRune(dir, ',') {
			return nil, fmt.Errorf("qemu: share directory %q has a comma", dir)
		}
	}
	nic := "vmnic-" + o.ID
	args := []string{
		"-accel", cfg.Accel,
		"-machine", "q35", "-cpu", o.CPU,
		"-smp", fmt.Sprintf("%d,maxcpus=%d", cfg.CPUs, o.MaxCPUs),
		"-m", fmt.Sprintf("%dM,slots=%d,maxmem=%s", cfg.MemoryMiB, o.Slots, o.MaxMem),
		"-drive", "if=pflash,format=raw,unit=0,file=" + o.OVMFCode + ",readonly=on",
		"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
		"-netdev", "user,id=" + nic + ",hostfwd=tcp::" + strconv.Itoa(cfg.HostPort) + "-:7002",
		"-device", "virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=" + nic + ",addr=0x2,romfile=",
		"-kernel", cfg.Kernel,
		"-append", strings.TrimSpace(o.Cmdline + " " + tcgCmdline(cfg.Accel) + cfg.Append),
		"-initrd", cfg.Initrd,
		"-nographic", "-monitor", "pty",
		"-fsdev", "local,id=cert_fs,path=" + shares["cert_fs"] + ",security_model=mapped",
		"-device", "virtio-9p-pci,fsdev=cert_fs,mount_tag=certs_share",
		"-fsdev", "local,id=env_fs,path=" + shares["env_fs"] + ",security_model=mapped",
		"-device", "virtio-9p-pci,fsdev=env_fs,mount_tag=env_share",
	}
	return args, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
