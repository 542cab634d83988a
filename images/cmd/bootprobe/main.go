// Command bootprobe is a stand-in /init for testing the image itself,
// independently of the supervisor: it mounts the pseudo filesystems, calls
// pid1.Prepare exactly as cvmd's PID 1 does, then reports on the serial
// console what the image provides, one "bootprobe: check NAME ok|fail DETAIL"
// line each, and "bootprobe: ready". It echoes lines on TCP :7002 (the
// hostfwd target), sends a hello to the manager address given as
// cvmd.probe.manager=HOST:PORT on the kernel command line (the guestfwd
// target), and powers off on SIGPWR (the ACPI power button, through
// guestboot). It is built only into test images by tests/vm.
package main

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"

	"github.com/cvmd/cvmd/supervisor/pid1"
	"golang.org/x/sys/unix"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	fmt.Println("bootprobe: start")
	mounts := []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2"}, {"tmpfs", "/run", "tmpfs"},
	}
	for _, m := range mounts {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fs, unix.MS_NOSUID, ""); err != nil && err != unix.EBUSY {
			check("mount-"+m.fs, err, "")
		}
	}
	// Signals first: a power button press must never be lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGPWR, unix.SIGTERM, unix.SIGINT)
	check("load-modules", pid1.LoadModules(log), "")
	check("prepare", pid1.Prepare(log), "")
	probes()
	fmt.Println("bootprobe: ready")
	s := <-sig
	fmt.Printf("bootprobe: got %v, powering off\n", s)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func check(name string, err error, detail string) {
	if err != nil {
		fmt.Printf("bootprobe: check %s fail %v\n", name, err)
		return
	}
	fmt.Printf("bootprobe: check %s ok %s\n", name, detail)
}

func probes() {
	ifc, err := net.InterfaceByName("eth0")
	var addrs []net.Addr
	if err == nil {
		addrs, err = ifc.Addrs()
	}
	check("eth0", err, fmt.Sprint(addrs))

	env, err := os.ReadFile(pid1.EnvDir + "/environment")
	check("env_share", err, strings.Join(strings.Fields(string(env)), " "))
	_, err = os.Stat(pid1.CertsDir + "/ca.pem")
	check("certs_share", err, "")

	_, err = os.Stat("/dev/tpmrm0")
	check("tpm", err, "/dev/tpmrm0")

	mods, err := os.ReadFile("/proc/modules")
	var names []string
	for _, l := range strings.Split(string(mods), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	check("modules", err, strings.Join(names, ","))

	var st unix.Statfs_t
	err = unix.Statfs("/sys/fs/cgroup", &st)
	if err == nil && st.Type != unix.CGROUP2_SUPER_MAGIC {
		err = fmt.Errorf("/sys/fs/cgroup is not cgroup2 (magic %#x)", st.Type)
	}
	check("cgroup2", err, "")

	if out, err := exec.Command("/usr/bin/hello-dyn").CombinedOutput(); err != nil {
		check("libc", fmt.Errorf("%v: %s", err, out), "")
	} else {
		check("libc", nil, strings.TrimSpace(string(out)))
	}

	_, err = os.Stat("/etc/ssl/certs/ca-certificates.crt")
	check("ca-certificates", err, "")

	ln, err := net.Listen("tcp", ":7002")
	check("listen-7002", err, "")
	if err == nil {
		go echo(ln)
	}

	if mgr := readCmdline().Get("cvmd.probe.manager"); mgr != "" {
		c, err := net.DialTimeout("tcp", mgr, 10*time.Second)
		if err == nil {
			_, err = fmt.Fprintf(c, "hello manager from the guest\n")
			c.Close()
		}
		check("manager-dial", err, mgr)
	}
}

func readCmdline() pid1.Cmdline {
	b, _ := os.ReadFile("/proc/cmdline")
	return pid1.ParseCmdline(string(b))
}

// echo answers each line with "echo: " and the line, for the host's hostfwd check.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "echo: %s\n", sc.Text())
			}
		}()
	}
}
