// Package qemu boots the cvmd image under qemu for development and the
// end-to-end tests: a swtpm vTPM, qemu's user network restricted to one
// hostfwd (127.0.0.1:port → guest :7002) and one guestfwd (the manager
// address inside the guest → a 127.0.0.1 port on the host), the manager's 9p
// shares, and the serial console captured line by line with host
// timestamps. Power-off goes through QMP's system_powerdown (the ACPI power
// button), as a cloud host would do it. MachineCocos is instead the VM
// Cocos's manager makes (cocos.go), run in a network namespace of its own
// (NetNS) and stopped as that manager stops it, with SIGTERM.
//
// It runs TCG by default (this project's machine has no usable KVM); it does
// not build images (images/build.sh does) and does not know what runs in the
// guest. Only tests and images/cmd may import it.
package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// GuestManagerAddr is where the guest reaches the manager: qemu forwards
// connections to it (guestfwd) to Config.ManagerAddr on the host.
const GuestManagerAddr = "10.0.2.100:7001"

// Config says what to boot and how to wire it.
type Config struct {
	// Kernel and Initrd are the image files (required).
	Kernel, Initrd string
	// Append is added to the kernel command line after
	// "console=ttyS0 panic=-1 quiet".
	Append string
	// MemoryMiB is the guest's memory; 0 means 1024.
	MemoryMiB int
	// CPUs is the number of vCPUs; 0 means 2.
	CPUs int
	// Accel is qemu's accelerator; "" means "tcg". With "kvm", ExtraArgs
	// can add the SEV-SNP objects (images/README.md).
	Accel string
	// TPM attaches a fresh swtpm vTPM (tpm-tis) whose state lives in Dir.
	TPM bool
	// EnvDir and CertsDir, when set, are shared read-only over 9p with the
	// tags env_share and certs_share, as Cocos's manager does.
	EnvDir, CertsDir string
	// HostPort is the 127.0.0.1 port forwarded to the guest's :7002; 0
	// picks a free one (see VM.HostAddr).
	HostPort int
	// ManagerAddr, when set, is the host address ("127.0.0.1:port") the
	// guest reaches at GuestManagerAddr. It requires PipeCommand.
	ManagerAddr string
	// PipeCommand is the command qemu runs for each guest connection to
	// GuestManagerAddr, with ManagerAddr appended as its last argument; it
	// must copy stdin to that address and the answers to stdout (Pipe does).
	PipeCommand []string
	// Dir holds the vTPM state and the serial log; required.
	Dir string
	// SerialLog, when set, receives every serial line prefixed with the
	// host time since qemu started; "" means Dir/serial.log.
	SerialLog string
	// DebugPort adds the virtio-serial port "cvmd.debug" that test images
	// serve (pid1.DebugMarker); see VM.Debug.
	DebugPort bool
	// Console, when set, also receives every timestamped serial line.
	Console io.Writer
	// Disks are virtio-blk disks, in order (the guest names them vda, vdb,
	// ...). The image uses the one with serial "cvmd-scratch" as its
	// encrypted scratch storage (supervisor/pid1/scratch.go).
	Disks []Disk
	// ExtraArgs are appended to qemu's command line.
	ExtraArgs []string
	// Stderr receives qemu's and swtpm's own messages; nil discards them.
	Stderr io.Writer
	// Machine is the VM's shape: the zero value is cvmd's own (above);
	// MachineCocos is the command line of Cocos's manager (cocos.go).
	Machine Machine
	// NetNS, when set, is the network namespace qemu and swtpm run in
	// (required by MachineCocos, whose hostfwd listens on every address).
	NetNS *NetNS
	// Cocos is what only MachineCocos uses.
	Cocos CocosOptions
}

// Disk is a raw disk image given to the guest as a virtio-blk device.
type Disk struct {
	// Path is the host file (raw format); it must exist.
	Path string
	// Serial is the device's virtio serial (at most 20 bytes), how the
	// guest recognises the disk.
	Serial string
}

// ScratchSerial is the serial that makes the image use a disk as its
// scratch storage.
const ScratchSerial = "cvmd-scratch"

// diskArgs are the qemu options for the disks.
func diskArgs(disks []Disk) ([]string, error) {
	var args []string
	for i, d := range disks {
		if strings.ContainsAny(d.Path, ",") || strings.ContainsAny(d.Serial, ", ") || len(d.Serial) > 20 {
			return nil, fmt.Errorf("qemu: disk %q (serial %q): no commas in the path, serial at most 20 characters without commas or spaces", d.Path, d.Serial)
		}
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("qemu: disk: %w", err)
		}
		id := fmt.Sprintf("disk%d", i)
		dev := "virtio-blk-pci,drive=" + id
		if d.Serial != "" {
			dev += ",serial=" + d.Serial
		}
		args = append(args, "-drive", "file="+d.Path+",if=none,id="+id+",format=raw,cache=writeback,aio=threads", "-device", dev)
	}
	return args, nil
}

// Line is one line of the serial console.
type Line struct {
	// At is the host time since qemu was started.
	At time.Duration
	// Text is the line without its end.
	Text string
}

// VM is a running qemu.
type VM struct {
	cfg      Config
	start    time.Time
	cmd      *exec.Cmd
	swtpm    *exec.Cmd
	qmp      *qmpConn // the QMP monitor, over a socketpair
	dbgHost  *os.File // the debug port's host end (a socketpair), until first used
	hostPort int
	logFile  *os.File
	readDone chan struct{}
	exited   chan struct{}
	exitErr  error

	dbgMu   sync.Mutex
	dbgConn net.Conn      // guarded by dbgMu
	dbgR    *bufio.Reader // guarded by dbgMu

	mu      sync.Mutex
	lines   []Line    // guarded by mu
	changed chan bool // closed and replaced when lines grows; guarded by mu
}

// Start boots the VM. The context bounds only the start: stop the VM with
// Powerdown and Wait, or Kill.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.Kernel == "" || cfg.Initrd == "" || cfg.Dir == "" {
		return nil, errors.New("qemu: Kernel, Initrd and Dir are required")
	}
	if cfg.ManagerAddr != "" && len(cfg.PipeCommand) == 0 {
		return nil, errors.New("qemu: ManagerAddr needs a PipeCommand")
	}
	if cfg.Machine == MachineCocos {
		if err := cfg.checkCocos(); err != nil {
			return nil, err
		}
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
		if cfg.Machine == MachineCocos {
			cfg.MemoryMiB = 2048 // the manager's MEMORY_SIZE
		}
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
		if cfg.Machine == MachineCocos {
			cfg.CPUs = 4 // the manager's SMP_COUNT
		}
	}
	if cfg.Accel == "" {
		cfg.Accel = "tcg"
	}
	if cfg.SerialLog == "" {
		cfg.SerialLog = filepath.Join(cfg.Dir, "serial.log")
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	v := &VM{cfg: cfg, readDone: make(chan struct{}), exited: make(chan struct{}), changed: make(chan bool)}
	if cfg.HostPort == 0 {
		p, err := freePortIn(cfg.NetNS)
		if err != nil {
			return nil, err
		}
		cfg.HostPort = p
	}
	v.hostPort = cfg.HostPort
	if cfg.NetNS != nil {
		// Everything that makes a socket or a process, in the namespace.
		var vm *VM
		err := cfg.NetNS.Do(func() (err error) { vm, err = v.launch(ctx, cfg); return err })
		return vm, err
	}
	return v.launch(ctx, cfg)
}

// launch is Start once cfg is complete.
func (v *VM) launch(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.ManagerAddr != "" {
		for _, a := range append(cfg.PipeCommand, cfg.ManagerAddr) {
			if strings.ContainsAny(a, " ,'\"\\") {
				return nil, fmt.Errorf("qemu: guestfwd command argument %q has a space, comma or quote", a)
			}
		}
	}
	var err error
	if v.logFile, err = os.Create(cfg.SerialLog); err != nil {
		return nil, fmt.Errorf("qemu: creating serial log: %w", err)
	}
	// QMP, the vTPM and the debug port reach qemu as inherited socketpair
	// ends (-chardev socket,fd=N): no socket file, nothing another process
	// could connect to. qemu's fds are 3, 4, ... in the order of extra.
	var extra, ours []*os.File
	fail := func(err error) (*VM, error) {
		for _, f := range append(extra, ours...) {
			f.Close()
		}
		v.logFile.Close()
		return nil, err
	}
	chardev := func(id string) (*os.File, string, error) {
		host, guest, err := socketpair(id)
		if err != nil {
			return nil, "", err
		}
		extra = append(extra, guest)
		ours = append(ours, host)
		return host, fmt.Sprintf("socket,id=%s,fd=%d", id, 2+len(extra)), nil
	}
	qmpHost, qmpDev, err := chardev("qmp")
	if err != nil {
		return fail(err)
	}
	var args []string
	if cfg.Machine == MachineCocos {
		if args, err = cocosArgs(cfg); err != nil {
			return fail(err)
		}
		args = append(args, "-chardev", qmpDev, "-mon", "chardev=qmp,mode=control")
	} else {
		args = cvmdArgs(cfg, qmpDev)
	}
	da, err := diskArgs(cfg.Disks)
	if err != nil {
		return fail(err)
	}
	args = append(args, da...)
	if cfg.TPM {
		name, err := v.startSwtpm()
		if err != nil {
			return fail(err)
		}
		args = append(args, "-chardev", "socket,id=chrtpm,path="+name+",abstract=on",
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	if cfg.DebugPort {
		dbgHost, dbgDev, err := chardev("dbg")
		if err != nil {
			return fail(err)
		}
		v.dbgHost = dbgHost
		args = append(args, "-device", "virtio-serial-pci", "-chardev", dbgDev,
			"-device", "virtserialport,chardev=dbg,name=cvmd.debug")
	}
	args = append(args, cfg.ExtraArgs...)

	v.cmd = exec.Command("qemu-system-x86_64", args...)
	v.cmd.ExtraFiles = extra
	v.cmd.Stderr = cfg.Stderr
	// Own process group: a Ctrl-C meant for runvm must reach the guest as a
	// power-button press, not kill qemu.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		v.cleanup()
		return nil, err
	}
	fmt.Fprintf(v.logFile, "# qemu-system-x86_64 %s\n", strings.Join(args, " "))
	v.start = time.Now()
	err = v.cmd.Start()
	for _, f := range extra {
		f.Close() // qemu has its copies (or never will)
	}
	if err != nil {
		qmpHost.Close()
		v.cleanup()
		return nil, fmt.Errorf("qemu: starting qemu-system-x86_64: %w", err)
	}
	if v.qmp, err = newQMP(ctx, qmpHost); err != nil {
		v.Kill()
		return nil, err
	}
	go v.readSerial(out)
	go func() {
		<-v.readDone
		v.exitErr = v.cmd.Wait()
		v.cleanup()
		close(v.exited)
	}()
	return v, nil
}

// cvmdArgs is the command line of cvmd's own VM (images/README.md).
func cvmdArgs(cfg Config, qmpDev string) []string {
	args := []string{
		"-accel", cfg.Accel, "-cpu", "max", "-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-monitor", "none", "-chardev", qmpDev, "-mon", "chardev=qmp,mode=control",
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 quiet " + tcgCmdline(cfg.Accel) + cfg.Append),
		"-device", "virtio-rng-pci",
	}
	netdev := fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:7002", cfg.HostPort)
	if cfg.ManagerAddr != "" {
		netdev += ",guestfwd=tcp:" + GuestManagerAddr + "-cmd:" + strings.Join(append(cfg.PipeCommand, cfg.ManagerAddr), " ")
	}
	args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=")
	for tag, dir := range map[string]string{"env_share": cfg.EnvDir, "certs_share": cfg.CertsDir} {
		if dir != "" {
			args = append(args, "-virtfs", "local,path="+dir+",mount_tag="+tag+",security_model=none,readonly=on,id="+tag)
		}
	}
	return args
}

// tcgCmdline is what the guest kernel is told under TCG that it assumes by
// itself under KVM: no_timer_check, which a KVM guest sets on its own
// (kvmclock) and which skips the boot-time check that the PIT's interrupt
// reaches the IO-APIC within ~40 ms. Under TCG on a loaded host that check
// fails now and then ("Kernel panic - not syncing: IO-APIC + timer doesn't
// work!", seen by make soak-vm): the emulated timer is late, not broken.
func tcgCmdline(accel string) string {
	if accel == "tcg" {
		return "no_timer_check "
	}
	return ""
}

// startSwtpm starts a swtpm socket emulator for one qemu and returns the
// abstract unix socket name qemu connects its TPM chardev to. The listening
// socket is made here and handed to swtpm as fd 3 (its --ctrl fd=): an
// abstract name leaves no file behind. (A connected socketpair, as QMP and
// the debug port use, froze the guest at its first TPM use with swtpm's
// clientfd=.) swtpm exits when qemu disconnects (--terminate).
func (v *VM) startSwtpm() (string, error) {
	state := filepath.Join(v.cfg.Dir, "tpm")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", fmt.Errorf("qemu: making vTPM state dir: %w", err)
	}
	name := fmt.Sprintf("cvmd-swtpm-%d-%d", os.Getpid(), swtpmSeq.Add(1))
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("qemu: swtpm control socket: %w", err)
	}
	ln := os.NewFile(uintptr(fd), "swtpm-ctrl")
	defer ln.Close() // swtpm has its copy once started
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: "@" + name}); err != nil {
		return "", fmt.Errorf("qemu: binding swtpm control socket: %w", err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		return "", fmt.Errorf("qemu: swtpm control socket: %w", err)
	}
	v.swtpm = exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,fd=3", "--terminate", "--log", "level=1")
	v.swtpm.ExtraFiles = []*os.File{ln}
	v.swtpm.Stdout, v.swtpm.Stderr = v.cfg.Stderr, v.cfg.Stderr
	v.swtpm.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := v.swtpm.Start(); err != nil {
		v.swtpm = nil
		return "", fmt.Errorf("qemu: starting swtpm: %w", err)
	}
	return name, nil
}

// swtpmSeq numbers the vTPMs of this process.
var swtpmSeq atomic.Int64

// socketpair returns two connected, close-on-exec unix stream sockets.
func socketpair(name string) (*os.File, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("qemu: socketpair for %s: %w", name, err)
	}
	return os.NewFile(uintptr(fds[0]), name+"-host"), os.NewFile(uintptr(fds[1]), name+"-qemu"), nil
}

func (v *VM) cleanup() {
	v.dbgMu.Lock()
	v.closeDebug()
	v.dbgMu.Unlock()
	if v.qmp != nil {
		v.qmp.close()
	}
	if v.swtpm != nil && v.swtpm.Process != nil {
		// swtpm ends by itself when qemu disconnects; give it a moment.
		done := make(chan struct{})
		go func() { v.swtpm.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			v.swtpm.Process.Kill()
			<-done
		}
	}
	v.logFile.Close()
}

// readSerial stamps and records each serial line until qemu closes stdout.
func (v *VM) readSerial(r io.Reader) {
	defer close(v.readDone)
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		s, err := br.ReadString('\n')
		if s != "" {
			at := time.Since(v.start)
			text := strings.TrimRight(s, "\r\n")
			fmt.Fprintf(v.logFile, "[%9.3f] %s\n", at.Seconds(), text)
			if v.cfg.Console != nil {
				fmt.Fprintf(v.cfg.Console, "[%9.3f] %s\n", at.Seconds(), text)
			}
			v.mu.Lock()
			v.lines = append(v.lines, Line{At: at, Text: text})
			close(v.changed)
			v.changed = make(chan bool)
			v.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// HostAddr is the host address forwarded to the guest's port 7002.
func (v *VM) HostAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(v.hostPort)) }

// SerialLog is the path of the timestamped serial log.
func (v *VM) SerialLog() string { return v.cfg.SerialLog }

// Started is the host time at which qemu was started.
func (v *VM) Started() time.Time { return v.start }

// Lines returns the serial lines so far.
func (v *VM) Lines() []Line {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Line(nil), v.lines...)
}

// Tail returns the last n serial lines, timestamped, for error messages.
func (v *VM) Tail(n int) string {
	ls := v.Lines()
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "  [%8.3f] %s\n", l.At.Seconds(), l.Text)
	}
	return b.String()
}

// Grep returns the serial lines that match re, timestamped.
func (v *VM) Grep(re *regexp.Regexp) string {
	var b strings.Builder
	for _, l := range v.Lines() {
		if re.MatchString(l.Text) {
			fmt.Fprintf(&b, "  [%8.3f] %s\n", l.At.Seconds(), l.Text)
		}
	}
	return b.String()
}

// WaitLine waits for the first serial line at index from or later that
// matches re and returns it with its index. It fails when ctx ends or qemu
// exits first.
func (v *VM) WaitLine(ctx context.Context, from int, re *regexp.Regexp) (int, Line, error) {
	for i := from; ; {
		v.mu.Lock()
		for ; i < len(v.lines); i++ {
			if re.MatchString(v.lines[i].Text) {
				l := v.lines[i]
				v.mu.Unlock()
				return i, l, nil
			}
		}
		changed := v.changed
		v.mu.Unlock()
		select {
		case <-changed:
		case <-v.readDone:
			// Look once more at what arrived before the end.
			v.mu.Lock()
			n := len(v.lines)
			v.mu.Unlock()
			if i < n {
				continue
			}
			return -1, Line{}, fmt.Errorf("qemu: exited before a serial line matched %q", re)
		case <-ctx.Done():
			return -1, Line{}, fmt.Errorf("qemu: waiting for a serial line matching %q: %w", re, ctx.Err())
		}
	}
}

// Debug sends one command to a test image's debug port ("ping",
// "kill CHILD") and returns the guest's answer line. The connection is kept
// for the VM's life: the guest sees one host session, not one per command.
func (v *VM) Debug(ctx context.Context, command string) (string, error) {
	if !v.cfg.DebugPort {
		return "", errors.New("qemu: the VM has no debug port")
	}
	v.dbgMu.Lock()
	defer v.dbgMu.Unlock()
	if v.dbgConn == nil {
		if v.dbgHost == nil {
			return "", errors.New("qemu: debug port closed after an error")
		}
		c, err := net.FileConn(v.dbgHost)
		v.dbgHost.Close()
		v.dbgHost = nil
		if err != nil {
			return "", fmt.Errorf("qemu: debug port: %w", err)
		}
		v.dbgConn, v.dbgR = c, bufio.NewReader(c)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	v.dbgConn.SetDeadline(dl)
	if _, err := fmt.Fprintln(v.dbgConn, command); err != nil {
		v.closeDebug()
		return "", fmt.Errorf("qemu: debug port: %w", err)
	}
	s, err := v.dbgR.ReadString('\n')
	if err != nil {
		v.closeDebug()
		return "", fmt.Errorf("qemu: debug port %q: %w", command, err)
	}
	return strings.TrimSpace(s), nil
}

// closeDebug drops the debug connection (an answer may be missing: later
// commands would read the wrong line). Preconditions: dbgMu held.
func (v *VM) closeDebug() {
	if v.dbgConn != nil {
		v.dbgConn.Close()
		v.dbgConn, v.dbgR = nil, nil
	}
	if v.dbgHost != nil {
		v.dbgHost.Close()
		v.dbgHost = nil
	}
}

// Powerdown presses the ACPI power button (QMP system_powerdown).
func (v *VM) Powerdown() error { return v.qmp.run("system_powerdown") }

// Exited is closed when qemu has exited and its output has been read.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Wait waits for qemu to exit, up to ctx, and returns its exit error.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitErr
	case <-ctx.Done():
		return fmt.Errorf("qemu: waiting for exit: %w", ctx.Err())
	}
}

// Terminate sends qemu SIGTERM, as Cocos's manager stops a VM: qemu exits
// at once, without telling the guest (docs/manager-link.md says what is
// lost), and swtpm with it. It waits for the exit, up to ctx.
func (v *VM) Terminate(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitErr
	default:
	}
	if err := v.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("qemu: SIGTERM: %w", err)
	}
	return v.Wait(ctx)
}

// Kill stops qemu at once (and swtpm with it) and waits for it.
func (v *VM) Kill() {
	select {
	case <-v.exited:
		return
	default:
	}
	v.cmd.Process.Kill()
	<-v.exited
}

// freePortIn is freePort in ns (nil: the caller's namespace).
func freePortIn(ns *NetNS) (int, error) {
	if ns == nil {
		return freePort()
	}
	var p int
	err := ns.Do(func() (err error) { p, err = freePort(); return err })
	return p, err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("qemu: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
