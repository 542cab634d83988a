package sandbox

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Algorithm is an algorithm sandbox after the supervisor has validated the
// runner's request and resolved its logical paths to host paths. It is what
// AlgorithmSpec turns into a Spec; it holds no policy of its own: every
// value in it has been checked against the configured defaults already.
type Algorithm struct {
	// ID names the sandbox (and its cgroup leaf).
	ID string
	// Args is argv (Args[0] resolved inside the sandbox); Env the whole
	// environment; Cwd the working directory ("" = "/").
	Args []string
	Env  []string
	Cwd  string
	// UID and GID the algorithm runs as; never 0.
	UID, GID int
	// Rootfs is a host directory that becomes "/" (a docker image's
	// unpacked rootfs), or "" for the base image: BaseDirs of the host bound
	// read-only into an otherwise empty root.
	Rootfs   string
	BaseDirs []string
	// Hide are host directories under BaseDirs (e.g. /etc/cocos) covered
	// inside the sandbox by an empty read-only tmpfs (not a bind of an empty
	// host dir, whose host path the sandbox's mountinfo would show). Each
	// must exist (the caller drops missing ones: the read-only view cannot
	// grow a mount point).
	Hide []string
	// Mounts are the request's binds, sources already resolved on the host.
	Mounts []AlgorithmMount
	// Results is the host directory (a size-capped tmpfs the caller made)
	// bound writable at ResultsDest; "" = none.
	Results     string
	ResultsDest string
	// Net is the network namespace to join (with its loopback up and the
	// proxy listener in it); "" makes a fresh one with only loopback.
	Net string
	// Limits: memory, pids, CPU and the size of the private /tmp.
	MemoryBytes int64
	Pids        int64
	CPUMillis   int64
	TmpBytes    int64
}

// AlgorithmMount is one bind of an algorithm sandbox.
type AlgorithmMount struct {
	Source   string // host path (may be /proc/<pid>/fd/<n> of an O_PATH fd)
	Dest     string // absolute inside the sandbox
	Writable bool
	// Exec allows executing and mmap-executing files from it (the
	// algorithm itself, a venv with compiled extensions).
	Exec bool
}

// AlgorithmProfile is the seccomp profile of untrusted algorithm code:
// UntrustedProfile (which refuses mount, ptrace, bpf, kexec, module loading,
// keyrings, namespace creation, setuid and friends) plus the harmless calls
// that interpreters and numeric libraries (CPython, numpy, OpenBLAS,
// joblib's semaphores) use.
func AlgorithmProfile() *Profile {
	p := UntrustedProfile()
	p.Name = "algorithm"
	p.Allow = sorted(append(p.Allow,
		"alarm", "pause", "getcpu", "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
		"sched_setattr", "sched_getattr", "sched_setparam", "sched_setscheduler", "get_mempolicy", "set_mempolicy", "mbind",
		"shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
		"msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
		"ioprio_get", "ioprio_set", "signalfd", "signalfd4", "inotify_init", "rt_tgsigqueueinfo",
		"pkey_alloc", "pkey_free", "pkey_mprotect", "set_thread_area", "get_thread_area", "seccomp", "mlockall", "munlockall",
		"io_setup", "io_destroy", "io_submit", "io_getevents", "io_cancel", "fstatfs64", "statfs64",
	))
	return p
}

// AlgorithmSpec builds the Spec of an algorithm sandbox: its own mount, pid,
// ipc, uts and network namespaces; no capabilities; a non-root uid;
// no_new_privs (always set by Config); AlgorithmProfile; a read-only root;
// the binds read-only unless declared writable; a private size-capped /tmp.
func AlgorithmSpec(a *Algorithm) (*Spec, error) {
	if a.UID <= 0 || a.GID <= 0 {
		return nil, fmt.Errorf("sandbox: algorithm %s: uid %d gid %d: must not be root", a.ID, a.UID, a.GID)
	}
	if a.Net == NetHost {
		return nil, fmt.Errorf("sandbox: algorithm %s: the host network is never given to an algorithm", a.ID)
	}
	s := &Spec{
		ID:       a.ID,
		Args:     append([]string(nil), a.Args...),
		Env:      append([]string(nil), a.Env...),
		Cwd:      a.Cwd,
		UID:      a.UID,
		GID:      a.GID,
		Hostname: "algorithm",
		Net:      a.Net,
		Rootfs:   a.Rootfs,
		Seccomp:  AlgorithmProfile(),
		Limits:   Limits{MemoryBytes: a.MemoryBytes, Pids: a.Pids, CPUMillis: a.CPUMillis},
	}
	if a.Rootfs == "" {
		for _, d := range a.BaseDirs {
			if !filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/" {
				return nil, fmt.Errorf("sandbox: algorithm %s: base dir %q: want a clean absolute path other than /", a.ID, d)
			}
			// The host's /bin may be a symlink to usr/bin: the bind follows it,
			// so the sandbox sees a directory at /bin with the same content.
			s.Mounts = append(s.Mounts, Mount{Kind: Bind, Source: d, Dest: d, Exec: d != "/etc"})
		}
		for _, h := range a.Hide {
			if !underAny(h, a.BaseDirs) {
				return nil, fmt.Errorf("sandbox: algorithm %s: hidden path %q: not under a base dir", a.ID, h)
			}
			if strings.HasSuffix(h, "/") {
				return nil, fmt.Errorf("sandbox: algorithm %s: hidden path %q: want a clean path", a.ID, h)
			}
			s.Mounts = append(s.Mounts, Mount{Kind: Tmpfs, Dest: h, ReadOnly: true, SizeBytes: 4096})
		}
	}
	tmp := a.TmpBytes
	if tmp <= 0 {
		tmp = 64 << 20
	}
	s.Mounts = append(s.Mounts, Mount{Kind: Tmpfs, Dest: "/tmp", SizeBytes: tmp})
	// /dev/shm for POSIX semaphores and shared memory (multiprocessing, joblib).
	s.Mounts = append(s.Mounts, Mount{Kind: Tmpfs, Dest: "/dev/shm", SizeBytes: min(tmp, 64<<20)})
	for _, m := range a.Mounts {
		s.Mounts = append(s.Mounts, Mount{Kind: Bind, Source: m.Source, Dest: m.Dest, Writable: m.Writable, Exec: m.Exec})
	}
	if a.Results != "" {
		dest := a.ResultsDest
		if dest == "" {
			dest = "/cocos/results"
		}
		s.Mounts = append(s.Mounts, Mount{Kind: Bind, Source: a.Results, Dest: dest, Writable: true})
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}
