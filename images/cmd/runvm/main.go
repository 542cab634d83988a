// Command runvm boots the cvmd image under qemu (make vm): swtpm as the
// vTPM, 127.0.0.1:7002 forwarded to the guest's ingress, the manager address
// inside the guest forwarded to a host port, the manager's environment file
// and certificates over 9p, and the serial console on stdout and in a log
// file with host timestamps. Ctrl-C presses the ACPI power button and waits
// for the guest's orderly shutdown.
//
//	runvm [flags]           boot
//	runvm pipe HOST:PORT    the guestfwd helper qemu runs per connection
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "pipe" {
		if err := qemu.Pipe(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "runvm: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "runvm: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	out := "images/out"
	kernel := flag.String("kernel", filepath.Join(out, "vmlinuz"), "kernel image")
	initrd := flag.String("initrd", filepath.Join(out, "initramfs.cpio.zst"), "initramfs")
	port := flag.Int("port", 7002, "host port on 127.0.0.1 forwarded to the guest's 7002 (0: any free port)")
	manager := flag.String("manager", "127.0.0.1:7001", "host address of the manager (CVMS server); the guest reaches it at "+qemu.GuestManagerAddr+"; empty: none")
	envFile := flag.String("env", "", "environment file for /etc/cocos/environment (default: AGENT_CVM_GRPC_URL pointing at the manager)")
	certs := flag.String("certs", "", "directory shared as certs_share (/etc/certs); empty: none")
	tpm := flag.Bool("tpm", true, "attach a swtpm vTPM")
	mem := flag.Int("m", 1024, "memory in MiB")
	smp := flag.Int("smp", 2, "vCPUs")
	accel := flag.String("accel", "tcg", "qemu accelerator (tcg; kvm on a host with hardware virtualization)")
	appendArgs := flag.String("append", "", "extra kernel command line")
	dir := flag.String("dir", "", "directory for sockets, vTPM state and serial.log (default: a new temporary one)")
	scratch := flag.String("scratch", "", "raw disk image given as the scratch disk (virtio-blk, serial "+qemu.ScratchSerial+"), made sparse with -scratch-gib if missing; the guest reformats it at every boot")
	scratchGiB := flag.Int("scratch-gib", 8, "size in GiB of a new -scratch image")
	flag.Parse()

	if *dir == "" {
		d, err := os.MkdirTemp("", "cvmd-vm-")
		if err != nil {
			return err
		}
		*dir = d
	}
	envDir := filepath.Join(*dir, "env")
	if err := os.MkdirAll(envDir, 0o755); err != nil {
		return err
	}
	env := []byte("AGENT_LOG_LEVEL=info\nAGENT_CVM_ID=dev-vm\n")
	if *manager != "" {
		env = append(env, "AGENT_CVM_GRPC_URL="+qemu.GuestManagerAddr+"\n"...)
	}
	if *envFile != "" {
		b, err := os.ReadFile(*envFile)
		if err != nil {
			return err
		}
		env = b
	}
	if err := os.WriteFile(filepath.Join(envDir, "environment"), env, 0o644); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var disks []qemu.Disk
	if *scratch != "" {
		if err := makeSparse(*scratch, int64(*scratchGiB)<<30); err != nil {
			return err
		}
		disks = append(disks, qemu.Disk{Path: *scratch, Serial: qemu.ScratchSerial})
	}
	cfg := qemu.Config{
		Kernel: *kernel, Initrd: *initrd, Append: *appendArgs, MemoryMiB: *mem, CPUs: *smp, Accel: *accel,
		TPM: *tpm, EnvDir: envDir, CertsDir: *certs, HostPort: *port, ManagerAddr: *manager,
		Dir: *dir, Console: os.Stdout, Stderr: os.Stderr, Disks: disks,
	}
	if *manager != "" {
		cfg.PipeCommand = []string{self, "pipe"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	vm, err := qemu.Start(ctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "runvm: guest :7002 at %s; manager at %s in the guest → %s; serial log %s; Ctrl-C powers off\n",
		vm.HostAddr(), qemu.GuestManagerAddr, orNone(*manager), vm.SerialLog())

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	for {
		select {
		case <-vm.Exited():
			if err := vm.Wait(context.Background()); err != nil {
				return fmt.Errorf("qemu: %w", err)
			}
			fmt.Fprintln(os.Stderr, "runvm: qemu exited 0")
			return nil
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "runvm: %v: pressing the power button (again to kill)\n", s)
			if err := vm.Powerdown(); err != nil {
				fmt.Fprintf(os.Stderr, "runvm: %v\n", err)
			}
			go func() {
				select {
				case <-sig:
				case <-time.After(60 * time.Second):
					fmt.Fprintln(os.Stderr, "runvm: no power-off after 60 s, killing qemu")
				case <-vm.Exited():
					return
				}
				vm.Kill()
			}()
		}
	}
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(none)"
	}
	return s
}

// makeSparse makes a sparse file of n bytes at path unless one exists.
func makeSparse(path string, n int64) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if n <= 0 {
		return fmt.Errorf("-scratch-gib must be positive")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(n); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
