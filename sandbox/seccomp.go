package sandbox

import (
	"fmt"
	"slices"
	"sort"

	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// Profile is a seccomp filter as data: an allowlist, with every other
// syscall failing with EPERM. Deny lists syscalls that must fail with EPERM
// even if a later Allow names them (they always win); they are spelled out so
// that the printed table says what is refused, not only what is allowed.
type Profile struct {
	// Name identifies the profile in the printed table ("fd-only", "net", ...).
	Name string `json:"name"`
	// Allow is the set of syscall names allowed. Names the kernel or
	// libseccomp does not know are ignored.
	Allow []string `json:"allow"`
	// Deny is the set of syscall names refused with EPERM.
	Deny []string `json:"deny"`
	// NoNamespaceClone refuses clone(2) with any CLONE_NEW* flag (EPERM) and
	// makes clone3(2) fail with ENOSYS, so that a process can fork and make
	// threads but never new namespaces (unprivileged user namespaces included).
	NoNamespaceClone bool `json:"no_namespace_clone"`
	// SocketFamilies are the address families (AF_* names) socket(2) may
	// create; socket(2) with any other family fails with EPERM. Empty means
	// socket(2) is refused altogether (it is then in Deny). socket is never
	// in Allow: the family rule is the only way to allow it, so that no
	// profile can allow every family by accident.
	SocketFamilies []string `json:"socket_families"`
	// SocketpairFamilies are the same for socketpair(2).
	SocketpairFamilies []string `json:"socketpair_families"`
	// Ioctls, if not empty, are the only ioctl(2) requests allowed (by name,
	// see ioctlRequests); every other request fails with EPERM. ioctl is
	// then not in Allow. Empty leaves ioctl to Allow.
	Ioctls []string `json:"ioctls,omitempty"`
}

// goRuntime is what a static Go binary (and its net, os, os/exec and grpc
// packages) needs without opening sockets. It is deliberately generous with
// harmless calls: a missing one shows up as a strange EPERM in a child.
var goRuntime = []string{
	// memory
	"brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "mlock", "munlock", "membarrier", "msync", "mincore",
	// threads, signals, scheduling
	"clone", "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "gettid", "getpid", "getppid",
	"tgkill", "tkill", "kill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigqueueinfo", "sigaltstack",
	"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_getscheduler", "getpriority", "setpriority",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time", "getitimer", "setitimer",
	"timer_create", "timer_settime", "timer_gettime", "timer_delete", "timer_getoverrun", "timerfd_create", "timerfd_settime", "timerfd_gettime",
	"exit", "exit_group", "wait4", "waitid", "restart_syscall", "prctl", "arch_prctl", "getrlimit", "setrlimit", "prlimit64", "getrusage", "sysinfo", "uname",
	"capget", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "getpgrp", "getpgid", "getsid", "setsid", "setpgid",
	"pidfd_open", "pidfd_send_signal", "pidfd_getfd",
	// processes (os/exec: the runner prepares environments with tools)
	"execve", "execveat", "vfork", "fork",
	// files
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "lseek", "close", "close_range",
	"open", "openat", "openat2", "creat", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
	"readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
	"rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "fchownat", "lchown",
	"truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "flock", "fadvise64", "readahead",
	"utime", "utimes", "utimensat", "futimesat", "umask", "copy_file_range", "sendfile", "splice", "tee", "vmsplice",
	"getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
	"memfd_create", "dup", "dup2", "dup3", "fcntl", "ioctl", "pipe", "pipe2", "eventfd", "eventfd2", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
	"select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"getrandom",
	// sockets that already exist (socketpair(2) and socket(2) are allowed
	// per address family: Profile.SocketpairFamilies, SocketFamilies)
	"sendmsg", "recvmsg", "sendto", "recvfrom", "sendmmsg", "recvmmsg", "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername",
	"accept", "accept4",
}

// dangerous is refused to every child, whatever its allowlist says.
var dangerous = []string{
	"mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	"unshare", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
	"bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"reboot", "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
	"keyctl", "add_key", "request_key", "userfaultfd", "iopl", "ioperm", "personality", "lookup_dcookie",
	"open_by_handle_at", "name_to_handle_at", "sethostname", "setdomainname", "syslog", "uselib", "vhangup",
	"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid",
}

// networking is what a child that makes or serves real sockets needs on
// top of goRuntime; socket(2) itself is allowed per family.
var networking = []string{"bind", "listen", "connect"}

// Families of the profiles. Every child makes its edges and gRPC
// connections with socketpair(AF_UNIX); only egress and algorithms call
// socket(2).
var (
	unixOnly = []string{"AF_UNIX"}
	// egressFamilies: the egress dials TCP over IPv4 and IPv6 and resolves
	// names over UDP/TCP to the resolvers of /etc/resolv.conf (Go's own
	// resolver, netgo: no nscd socket, no netlink; its listeners are handed
	// in). Nothing else.
	egressFamilies = []string{"AF_INET", "AF_INET6"}
	// algorithmFamilies: TCP to its proxy on 127.0.0.1 (and ::1), and
	// AF_UNIX for IPC inside the sandbox (multiprocessing, joblib). Not
	// AF_NETLINK (getifaddrs fails; glibc's getaddrinfo then assumes both
	// IPv4 and IPv6), not AF_VSOCK (a network namespace does not confine it:
	// it reaches the host), not AF_PACKET, AF_ALG, AF_KEY, ...
	algorithmFamilies = []string{"AF_UNIX", "AF_INET", "AF_INET6"}
)

// FDOnlyProfile is for children that talk only over inherited fds:
// socket(2) is refused; socketpair(2) is allowed for AF_UNIX.
func FDOnlyProfile() *Profile {
	return &Profile{Name: "fd-only", Allow: sorted(goRuntime), Deny: sorted(append(append([]string{"socket"}, dangerous...), networking...)),
		NoNamespaceClone: true, SocketFamilies: []string{}, SocketpairFamilies: unixOnly}
}

// NetworkProfile is FDOnlyProfile plus socket(2) for AF_INET and AF_INET6,
// bind, listen and connect, for the one child that reaches the network
// (egress).
func NetworkProfile() *Profile {
	return &Profile{Name: "net", Allow: sorted(append(append([]string{}, goRuntime...), networking...)), Deny: sorted(dangerous),
		NoNamespaceClone: true, SocketFamilies: egressFamilies, SocketpairFamilies: unixOnly}
}

// untrustedDropped are goRuntime calls that code we did not write never
// needs and that would widen what it can do: pidfd_getfd takes a copy of
// another process's fd; memfd_create makes an executable file in memory,
// which is the way around the noexec of every writable mount (/tmp,
// /dev/shm, results) and of the datasets. ioctl is narrowed to Ioctls.
var untrustedDropped = []string{"pidfd_getfd", "memfd_create", "ioctl"}

// UntrustedProfile is for algorithm code: NetworkProfile's calls (an
// algorithm reaches its proxy over TCP inside its own network namespace)
// with socket(2) for AF_UNIX, AF_INET and AF_INET6 only, ioctl(2) narrowed
// to terminal and fd-flag requests, and no pidfd_getfd or memfd_create.
func UntrustedProfile() *Profile {
	p := NetworkProfile()
	p.Name = "untrusted"
	p.Allow = slices.DeleteFunc(p.Allow, func(n string) bool { return slices.Contains(untrustedDropped, n) })
	p.Deny = sorted(append(p.Deny, "pidfd_getfd", "memfd_create"))
	p.SocketFamilies = algorithmFamilies
	p.Ioctls = untrustedIoctls
	return p
}

// untrustedIoctls are the ioctl requests an algorithm may make: asking
// whether an fd is a terminal and what it is like (isatty, tcgetattr, the
// window size: CPython, glibc, libuv, the JVM all do), setting terminal
// modes (only acts on a tty, and an algorithm has none), bytes readable,
// non-blocking and close-on-exec flags. Socket ioctls (SIOC*: interface
// tables, routes), device ioctls and file-system ioctls fail with EPERM.
var untrustedIoctls = []string{
	"TCGETS", "TCSETS", "TCSETSW", "TCSETSF", "TCGETS2", "TCSETS2", "TCSETSW2", "TCSETSF2",
	"TIOCGWINSZ", "TIOCGPGRP", "FIONREAD", "FIONBIO", "FIONCLEX", "FIOCLEX", "FIOASYNC",
}

// ioctlRequests are the request numbers (x86_64) of the ioctls a Profile
// may name.
var ioctlRequests = map[string]uint64{
	"TCGETS": 0x5401, "TCSETS": 0x5402, "TCSETSW": 0x5403, "TCSETSF": 0x5404,
	"TCGETS2": 0x802c542a, "TCSETS2": 0x402c542b, "TCSETSW2": 0x402c542c, "TCSETSF2": 0x402c542d,
	"TIOCGPGRP": 0x540f, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541b, "FIONBIO": 0x5421,
	"FIONCLEX": 0x5450, "FIOCLEX": 0x5451, "FIOASYNC": 0x5452,
}

// SocketFamily is one address family of socket(2).
type SocketFamily struct {
	Name   string
	Number int
}

// SocketFamilies are every address family Linux defines (AF_UNSPEC ..
// AF_MCTP, AF_MAX = 46), for profiles and for tests that try them all.
var SocketFamilies = []SocketFamily{
	{"AF_UNSPEC", 0}, {"AF_UNIX", 1}, {"AF_INET", 2}, {"AF_AX25", 3}, {"AF_IPX", 4}, {"AF_APPLETALK", 5}, {"AF_NETROM", 6},
	{"AF_BRIDGE", 7}, {"AF_ATMPVC", 8}, {"AF_X25", 9}, {"AF_INET6", 10}, {"AF_ROSE", 11}, {"AF_DECnet", 12}, {"AF_NETBEUI", 13},
	{"AF_SECURITY", 14}, {"AF_KEY", 15}, {"AF_NETLINK", 16}, {"AF_PACKET", 17}, {"AF_ASH", 18}, {"AF_ECONET", 19}, {"AF_ATMSVC", 20},
	{"AF_RDS", 21}, {"AF_SNA", 22}, {"AF_IRDA", 23}, {"AF_PPPOX", 24}, {"AF_WANPIPE", 25}, {"AF_LLC", 26}, {"AF_IB", 27},
	{"AF_MPLS", 28}, {"AF_CAN", 29}, {"AF_TIPC", 30}, {"AF_BLUETOOTH", 31}, {"AF_IUCV", 32}, {"AF_RXRPC", 33}, {"AF_ISDN", 34},
	{"AF_PHONET", 35}, {"AF_IEEE802154", 36}, {"AF_CAIF", 37}, {"AF_ALG", 38}, {"AF_NFC", 39}, {"AF_VSOCK", 40}, {"AF_KCM", 41},
	{"AF_QIPCRTR", 42}, {"AF_SMC", 43}, {"AF_XDP", 44}, {"AF_MCTP", 45},
}

// familyNumber returns the number of the AF_* name.
func familyNumber(name string) (int, bool) {
	for _, f := range SocketFamilies {
		if f.Name == name {
			return f.Number, true
		}
	}
	return 0, false
}

// Validate reports what makes p ambiguous or unknown: socket(2) or
// socketpair(2) in Allow (they are allowed only per family), a family or
// ioctl name this package does not know, socket both denied and given
// families, ioctl both in Allow and narrowed.
func (p *Profile) Validate() error {
	for _, call := range []string{"socket", "socketpair"} {
		if slices.Contains(p.Allow, call) {
			return fmt.Errorf("sandbox: profile %s: %s in allow: allow it per address family", p.Name, call)
		}
	}
	for _, fams := range [][]string{p.SocketFamilies, p.SocketpairFamilies} {
		for _, f := range fams {
			if _, ok := familyNumber(f); !ok {
				return fmt.Errorf("sandbox: profile %s: unknown address family %q", p.Name, f)
			}
		}
	}
	if len(p.SocketFamilies) > 0 && slices.Contains(p.Deny, "socket") {
		return fmt.Errorf("sandbox: profile %s: socket both denied and allowed for %v", p.Name, p.SocketFamilies)
	}
	if len(p.SocketpairFamilies) > 0 && slices.Contains(p.Deny, "socketpair") {
		return fmt.Errorf("sandbox: profile %s: socketpair both denied and allowed for %v", p.Name, p.SocketpairFamilies)
	}
	if len(p.Ioctls) > 0 && slices.Contains(p.Allow, "ioctl") {
		return fmt.Errorf("sandbox: profile %s: ioctl both allowed and narrowed to %v", p.Name, p.Ioctls)
	}
	for _, n := range p.Ioctls {
		if _, ok := ioctlRequests[n]; !ok {
			return fmt.Errorf("sandbox: profile %s: unknown ioctl %q", p.Name, n)
		}
	}
	return nil
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	// drop duplicates
	w := 0
	for i, v := range out {
		if i == 0 || v != out[w-1] {
			out[w] = v
			w++
		}
	}
	return out[:w]
}

// nsFlags are the clone flags that make namespaces.
const nsFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// config turns the profile into libcontainer's form.
func (p *Profile) config() *configs.Seccomp {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	s := &configs.Seccomp{DefaultAction: configs.Errno, DefaultErrnoRet: &eperm}
	deny := map[string]bool{}
	for _, n := range p.Deny {
		deny[n] = true
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: n, Action: configs.Errno, ErrnoRet: &eperm})
	}
	for _, n := range sorted(p.Allow) {
		if deny[n] {
			continue
		}
		if p.NoNamespaceClone && n == "clone" {
			// Allowed only when none of the namespace flags is set (arg 0 is the flags on x86_64).
			s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: "clone", Action: configs.Allow,
				Args: []*configs.Arg{{Index: 0, Value: nsFlags, ValueTwo: 0, Op: configs.MaskEqualTo}}})
			continue
		}
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: n, Action: configs.Allow})
	}
	// One rule per family (libseccomp ORs the rules of a syscall). The
	// comparison covers all 64 bits: a family with high bits set (which the
	// kernel would truncate to an int) matches no rule and gets EPERM.
	for _, fam := range []struct {
		call  string
		names []string
	}{{"socket", p.SocketFamilies}, {"socketpair", p.SocketpairFamilies}} {
		for _, name := range fam.names {
			n, _ := familyNumber(name) // Validate refused unknown names
			s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: fam.call, Action: configs.Allow,
				Args: []*configs.Arg{{Index: 0, Value: uint64(n), Op: configs.EqualTo}}})
		}
	}
	// The kernel reads an ioctl request as a 32-bit unsigned int: compare
	// only the low 32 bits, so that a sign-extended request (TCGETS2 passed
	// as a negative int) still matches, and high bits cannot hide one.
	for _, name := range p.Ioctls {
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: "ioctl", Action: configs.Allow,
			Args: []*configs.Arg{{Index: 1, Value: 0xffffffff, ValueTwo: ioctlRequests[name], Op: configs.MaskEqualTo}}})
	}
	if p.NoNamespaceClone {
		// clone3 passes its flags in memory that seccomp cannot read: ENOSYS makes
		// libc and Go fall back to clone(2), which is filtered above.
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: "clone3", Action: configs.Errno, ErrnoRet: &enosys})
	}
	return s
}
