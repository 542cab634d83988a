package sandbox

import (
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
	// sockets that already exist, and socketpair(2) (what ipc.Dialer uses)
	"socketpair", "sendmsg", "recvmsg", "sendto", "recvfrom", "sendmmsg", "recvmmsg", "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername",
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

// networking is what a child that makes or serves real sockets needs on top of goRuntime.
var networking = []string{"socket", "bind", "listen", "connect"}

// FDOnlyProfile is for children that talk only over inherited fds:
// socket(2) is refused; socketpair(2) stays allowed.
func FDOnlyProfile() *Profile {
	return &Profile{Name: "fd-only", Allow: sorted(goRuntime), Deny: sorted(append(append([]string{}, dangerous...), networking...)), NoNamespaceClone: true}
}

// NetworkProfile is FDOnlyProfile plus socket, bind, listen and connect, for
// the one child that reaches the network (egress).
func NetworkProfile() *Profile {
	return &Profile{Name: "net", Allow: sorted(append(append([]string{}, goRuntime...), networking...)), Deny: sorted(dangerous), NoNamespaceClone: true}
}

// UntrustedProfile is for algorithm code: like NetworkProfile (an algorithm
// reaches its proxy over a TCP listener inside its own network namespace).
func UntrustedProfile() *Profile {
	p := NetworkProfile()
	p.Name = "untrusted"
	return p
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
	if p.NoNamespaceClone {
		// clone3 passes its flags in memory that seccomp cannot read: ENOSYS makes
		// libc and Go fall back to clone(2), which is filtered above.
		s.Syscalls = append(s.Syscalls, &configs.Syscall{Name: "clone3", Action: configs.Errno, ErrnoRet: &enosys})
	}
	return s
}
