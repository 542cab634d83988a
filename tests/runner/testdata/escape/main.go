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
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

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

// errName is an errno's symbolic name, or "ok".
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(unix.Errno); ok {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
	}
	return err.Error()
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
	case "sockets": // socket(2) and socketpair(2) for every address family
		// Only AF_UNIX, AF_INET and AF_INET6 may get past the filter; every
		// other family must fail with EPERM whatever the type. One line per
		// family for the test's table: "family <n> <results>".
		allowed := map[int]bool{unix.AF_UNIX: true, unix.AF_INET: true, unix.AF_INET6: true}
		var got []string
		for fam := 0; fam < 64; fam++ {
			var res []string
			open := false
			for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET, unix.SOCK_RAW} {
				fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, 0)
				if err == nil {
					unix.Close(fd)
				}
				open = open || err != unix.EPERM
				res = append(res, errName(err))
			}
			fds, err := unix.Socketpair(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err == nil {
				unix.Close(fds[0])
				unix.Close(fds[1])
			}
			res = append(res, "pair:"+errName(err))
			fmt.Printf("family %d %s\n", fam, strings.Join(res, " "))
			if (open && !allowed[fam]) || (err != unix.EPERM && fam != unix.AF_UNIX) {
				got = append(got, strconv.Itoa(fam))
			}
		}
		if len(got) > 0 {
			escaped("sockets of families %v got past the filter", got)
		}
		blocked("every family but AF_UNIX, AF_INET and AF_INET6 refused with EPERM")
	case "int80": // socket(AF_VSOCK) through the 32-bit syscall entry, in a child
		out, err := exec.Command("/cocos/algo", "int80-child").CombinedOutput()
		if err == nil {
			escaped("i386 socket(AF_VSOCK): %s", out)
		}
		if ee, ok := err.(*exec.ExitError); ok {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				blocked("the 32-bit syscall killed the process: %v", ws.Signal())
			}
		}
		blocked("i386 socket(AF_VSOCK): %s", strings.TrimSpace(string(out)))
	case "int80-child":
		// seccomp kills the thread (not the process) that makes a syscall
		// of an architecture the filter was not built for: make it on a
		// thread of its own and watch that thread.
		const i386Socket = 359 // __NR_socket on i386
		tid := make(chan int)
		res := make(chan uintptr)
		go func() {
			runtime.LockOSThread()
			tid <- unix.Gettid()
			res <- int80(i386Socket, unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		}()
		t := <-tid
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case r := <-res:
				if int32(r) < 0 {
					fmt.Printf("errno %d\n", -int32(r))
					os.Exit(1)
				}
				fmt.Printf("fd %d\n", r)
				os.Exit(0)
			default:
			}
			// A killed thread leaves /proc, or stays a zombie if it led the
			// thread group.
			st, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", t))
			if _, after, ok := strings.Cut(string(st), ") "); err != nil || ok && strings.HasPrefix(after, "Z") {
				fmt.Println("thread killed")
				os.Exit(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Println("neither an answer nor a dead thread")
		os.Exit(1)
	case "vsock": // listen on vsock, which a network namespace does not confine
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		if err != nil {
			blocked("socket(AF_VSOCK): %v", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: 5000}); err != nil {
			blocked("bind vsock: %v", err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			blocked("listen vsock: %v", err)
		}
		escaped("listening on vsock port 5000")
	case "ioctl": // socket ioctls refused; terminal queries answered by the kernel
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			fmt.Println("socket:", err)
			os.Exit(1)
		}
		buf := make([]byte, 1024)
		ifc := struct {
			len uint32
			_   uint32
			ptr uintptr
		}{uint32(len(buf)), 0, uintptr(unsafe.Pointer(&buf[0]))}
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGIFCONF, uintptr(unsafe.Pointer(&ifc)))
		_, terr := unix.IoctlGetTermios(1, unix.TCGETS)
		fmt.Printf("TCGETS on stdout: %v\n", terr)
		if e == 0 {
			escaped("SIOCGIFCONF answered")
		}
		blocked("SIOCGIFCONF: %v", e)
	case "memexec": // run a binary from every place the algorithm can write
		self, err := os.ReadFile("/proc/self/exe")
		if err != nil {
			fmt.Println("reading self:", err)
			os.Exit(1)
		}
		var why []string
		for _, dir := range []string{"/tmp", "/dev/shm", "/cocos/results"} {
			p := dir + "/copy"
			if err := os.WriteFile(p, self, 0o755); err != nil {
				why = append(why, fmt.Sprintf("%s: %v", dir, err))
				continue
			}
			err := exec.Command(p, "whoami").Run()
			os.Remove(p)
			if err == nil {
				escaped("executed a copy in %s", dir)
			}
			why = append(why, fmt.Sprintf("%s: %v", dir, err))
		}
		fd, err := unix.MemfdCreate("copy", 0)
		if err == nil {
			unix.Write(fd, self)
			if err := exec.Command(fmt.Sprintf("/proc/self/fd/%d", fd), "whoami").Run(); err == nil {
				escaped("executed a copy from a memfd")
			}
		}
		why = append(why, fmt.Sprintf("memfd_create: %v", err))
		blocked("%s", strings.Join(why, "; "))
	case "pidfd_getfd": // take a copy of another process's fd
		c := exec.Command("/cocos/algo", "sleep", "30")
		if err := c.Start(); err != nil {
			fmt.Println("start:", err)
			os.Exit(1)
		}
		pfd, err := unix.PidfdOpen(c.Process.Pid, 0)
		if err != nil {
			c.Process.Kill()
			blocked("pidfd_open: %v", err)
		}
		_, err = unix.PidfdGetfd(pfd, 1, 0)
		c.Process.Kill()
		if err == nil {
			escaped("pidfd_getfd took the child's stdout")
		}
		blocked("pidfd_getfd: %v", err)
	case "mountinfo": // what the algorithm learns of the host's paths
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			fmt.Println("mountinfo:", err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
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
	case "sparse": // a sparse file: a huge size in no blocks, under the results quota
		f, err := os.Create("/cocos/results/sparse")
		if err != nil {
			fmt.Println("create:", err)
			os.Exit(1)
		}
		if err := f.Truncate(256 << 20); err != nil {
			blocked("truncate: %v", err)
		}
		f.Close()
		fmt.Println("made a 256 MiB sparse results file; its copy is what must not happen")
	case "hardlinks": // one file's blocks, counted once by the quota, under many names
		if err := os.WriteFile("/cocos/results/one", make([]byte, 1<<20), 0o644); err != nil {
			fmt.Println("write:", err)
			os.Exit(1)
		}
		for i := 0; i < 64; i++ {
			if err := os.Link("/cocos/results/one", fmt.Sprintf("/cocos/results/link%d", i)); err != nil {
				blocked("link %d: %v", i, err)
			}
		}
		fmt.Println("made 64 links to a 1 MiB results file")
	case "files": // empty files take no blocks, only inodes
		for i := 0; i < 20000; i++ {
			f, err := os.Create(fmt.Sprintf("/cocos/results/f%d", i))
			if err != nil {
				blocked("after %d files: %v", i, err)
			}
			f.Close()
		}
		escaped("made 20000 empty results files")
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
