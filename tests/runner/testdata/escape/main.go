// Command escape is run as an algorithm by the runner's tests. Each
// subcommand tries one way out of the sandbox. It prints "blocked: <why>"
// and exits 0 when the attempt failed as it must, and prints "ESCAPED: ..."
// and exits 3 when it succeeded.
package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func blocked(format string, a ...any) {
	fmt.Printf("blocked: "+format+"\n", a...)
	os.Exit(0)
}

func escaped(format string, a ...any) {
	fmt.Printf("ESCAPED: "+format+"\n", a...)
	os.Exit(3)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: escape <attempt> [args]")
		os.Exit(2)
	}
	arg := func(i int) string {
		if len(os.Args) > i {
			return os.Args[i]
		}
		return ""
	}
	switch os.Args[1] {
	case "read": // read a file that must not be visible
		b, err := os.ReadFile(arg(2))
		if err != nil {
			blocked("%v", err)
		}
		escaped("read %d bytes of %s", len(b), arg(2))
	case "write": // write a file outside results
		if err := os.WriteFile(arg(2), []byte("x"), 0o644); err != nil {
			blocked("%v", err)
		}
		escaped("wrote %s", arg(2))
	case "ps": // other processes in /proc
		ents, _ := os.ReadDir("/proc")
		var pids []string
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, e.Name())
			}
		}
		if len(pids) == 1 && pids[0] == "1" {
			blocked("only pid 1 (self) visible")
		}
		escaped("pids visible: %v", pids)
	case "mount":
		if err := unix.Mount("tmpfs", "/tmp", "tmpfs", 0, ""); err != nil {
			blocked("mount: %v", err)
		}
		escaped("mounted a tmpfs")
	case "ptrace":
		if err := unix.PtraceAttach(1); err != nil {
			if _, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0); e != 0 {
				blocked("ptrace: %v / %v", err, e)
			}
		}
		escaped("ptrace worked")
	case "unshare":
		for _, f := range []int{unix.CLONE_NEWUSER, unix.CLONE_NEWNS, unix.CLONE_NEWNET} {
			if err := unix.Unshare(f); err == nil {
				escaped("unshare %#x worked", f)
			}
		}
		// clone with namespace flags through fork/exec
		cmd := exec.Command("/cocos/algo", "whoami")
		cmd.SysProcAttr = &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER}
		if err := cmd.Run(); err == nil {
			escaped("clone(CLONE_NEWUSER) worked")
		}
		blocked("unshare and clone with namespace flags refused")
	case "module":
		if err := unix.InitModule([]byte("\x7fELF"), ""); err == unix.EPERM {
			if _, _, e := unix.Syscall(unix.SYS_FINIT_MODULE, 0, 0, 0); e == unix.EPERM {
				blocked("init_module/finit_module: EPERM")
			}
		} else if err == nil {
			escaped("init_module worked")
		}
		blocked("init_module refused")
	case "bpf":
		if _, _, e := unix.Syscall(unix.SYS_BPF, 0, 0, 0); e != 0 {
			blocked("bpf: %v", e)
		}
		escaped("bpf worked")
	case "keyring":
		if _, err := unix.AddKey("user", "x", []byte("y"), unix.KEY_SPEC_PROCESS_KEYRING); err != nil {
			blocked("add_key: %v", err)
		}
		escaped("add_key worked")
	case "connect": // TCP to an address that is not the proxy
		c, err := net.DialTimeout("tcp", arg(2), 2*time.Second)
		if err != nil {
			blocked("%v", err)
		}
		c.Close()
		escaped("connected to %s", arg(2))
	case "proxy": // the proxy must be reachable
		c, err := net.DialTimeout("tcp", "127.0.0.1:3128", 2*time.Second)
		if err != nil {
			fmt.Println("proxy unreachable:", err)
			os.Exit(1)
		}
		c.Close()
		fmt.Println("proxy reachable; env", os.Getenv("HTTP_PROXY"))
	case "fill": // write past the results cap
		f, err := os.Create("/cocos/results/big")
		if err != nil {
			fmt.Println("create:", err)
			os.Exit(1)
		}
		buf := make([]byte, 1<<20)
		for i := 0; i < 1<<14; i++ {
			if _, err := f.Write(buf); err != nil {
				blocked("after %d MiB: %v", i, err)
			}
		}
		escaped("wrote 16 GiB into results")
	case "oom": // allocate past the memory limit
		var keep [][]byte
		for i := 0; i < 1<<14; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			keep = append(keep, b)
		}
		escaped("allocated %d MiB", len(keep))
	case "forkbomb":
		var cmds []*exec.Cmd
		for i := 0; i < 5000; i++ {
			c := exec.Command("/cocos/algo", "sleep", "60")
			if err := c.Start(); err != nil {
				blocked("process %d: %v", i, err)
			}
			cmds = append(cmds, c)
		}
		escaped("started %d processes", len(cmds))
	case "setuid": // exec a setuid-root binary
		out, err := exec.Command(arg(2), "whoami").CombinedOutput()
		if err != nil {
			blocked("exec %s: %v %s", arg(2), err, out)
		}
		if strings.TrimSpace(string(out)) == "euid=0" {
			escaped("setuid binary ran as root")
		}
		blocked("setuid binary ran as %s", strings.TrimSpace(string(out)))
	case "exec": // run a file that is data, not the algorithm
		if err := exec.Command(arg(2), "whoami").Run(); err != nil {
			blocked("exec %s: %v", arg(2), err)
		}
		escaped("executed %s", arg(2))
	case "whoami":
		fmt.Printf("euid=%d\n", os.Geteuid())
	case "sleep": // for stop tests: a process tree that would live long
		d, _ := time.ParseDuration(arg(2) + "s")
		if arg(3) == "tree" {
			for i := 0; i < 3; i++ {
				exec.Command("/cocos/algo", "sleep", arg(2)).Start()
			}
		}
		fmt.Println("sleeping")
		time.Sleep(d)
	case "spew": // 8 MiB on stdout without a newline, then one on stderr
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 'x'
		}
		for i := 0; i < 8; i++ {
			os.Stdout.Write(b)
		}
		os.Stderr.Write(b[:10000])
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
	case "caps":
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Cap") || strings.HasPrefix(l, "NoNewPrivs") || strings.HasPrefix(l, "Seccomp:") || strings.HasPrefix(l, "Uid") {
				fmt.Println(l)
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown attempt", os.Args[1])
		os.Exit(2)
	}
}
