package sandbox

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/opencontainers/cgroups"
	devconfig "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"golang.org/x/sys/unix"
)

// Spec declares one sandbox. The zero value of every field is the most
// restrictive choice: no network, no capabilities, no writable path, uid 0
// without capabilities, no devices beyond /dev/null, zero, full, random,
// urandom and tty.
type Spec struct {
	// ID names the container; it must be unique within a Runtime
	// ([A-Za-z0-9_.-]+). It is also the leaf of the cgroup path.
	ID string `json:"id"`
	// Args is argv; Args[0] is resolved inside the sandbox. "/proc/self/exe"
	// re-executes the (sealed) binary that started the sandbox.
	Args []string `json:"args"`
	// Env is the whole environment (KEY=VALUE); nothing is inherited.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory inside the sandbox; "" means "/".
	Cwd string `json:"cwd,omitempty"`
	// UID and GID the process runs as (inside the sandbox; no user namespace).
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Hostname inside the UTS namespace; "" means the ID.
	Hostname string `json:"hostname,omitempty"`
	// Net selects the network namespace: "" a fresh one with only a loopback
	// interface, NetHost the caller's own (no network namespace), or the path
	// of an existing one (/proc/PID/ns/net, a bind-mounted nsfs file).
	Net string `json:"net,omitempty"`
	// Rootfs is the directory that becomes "/", mounted read-only. "" means
	// the Runtime's empty skeleton: the view then has only what Mounts bind
	// in. The host's "/" is refused: its submounts would stay writable; bind
	// the directories needed read-only instead.
	Rootfs string `json:"rootfs,omitempty"`
	// Mounts are applied in order on top of Rootfs. /proc, /dev (tmpfs with
	// the allowed device nodes) and a read-only /sys are always there.
	Mounts []Mount `json:"mounts,omitempty"`
	// Devices are extra device node paths of the host made available
	// read-write (e.g. /dev/tpmrm0). A missing one is an error at Start.
	Devices []string `json:"devices,omitempty"`
	// Caps is the capability set (bounding = effective = permitted), e.g.
	// "CAP_NET_BIND_SERVICE". Empty means none.
	Caps []string `json:"caps,omitempty"`
	// Seccomp is the syscall filter; nil means FDOnlyProfile (never "none").
	Seccomp *Profile `json:"seccomp,omitempty"`
	// Limits are the cgroup limits.
	Limits Limits `json:"limits"`
	// NoFile is RLIMIT_NOFILE; 0 means 4096.
	NoFile uint64 `json:"nofile,omitempty"`
}

// NetHost as Spec.Net keeps the caller's network namespace.
const NetHost = "host"

// MountKind is how a Mount is made.
type MountKind string

const (
	// Bind binds a host path (file or directory) into the view.
	Bind MountKind = "bind"
	// Tmpfs mounts a fresh tmpfs private to the sandbox.
	Tmpfs MountKind = "tmpfs"
)

// Mount is one mount of a sandbox's rootfs view.
type Mount struct {
	Kind MountKind `json:"kind"`
	// Source is the host path for Bind; unused for Tmpfs.
	Source string `json:"source,omitempty"`
	// Dest is the absolute path inside the sandbox.
	Dest string `json:"dest"`
	// Writable makes a bind read-write (binds are read-only by default; a
	// tmpfs is writable unless ReadOnly).
	Writable bool `json:"writable,omitempty"`
	// ReadOnly makes a tmpfs read-only and empty: a cover over a path the
	// sandbox must not see.
	ReadOnly bool `json:"read_only,omitempty"`
	// SizeBytes caps a tmpfs; 0 means 16 MiB.
	SizeBytes int64 `json:"size_bytes,omitempty"`
	// Exec allows executing files from this mount (noexec otherwise).
	Exec bool `json:"exec,omitempty"`
}

// Limits are a sandbox's cgroup limits. Zero means "no limit" for CPU and
// the package default for memory (256 MiB) and pids (64) — never unlimited.
type Limits struct {
	MemoryBytes int64 `json:"memory_bytes"`
	// Pids counts threads too: a Go program needs ~10 before doing anything.
	Pids      int64 `json:"pids"`
	CPUMillis int64 `json:"cpu_millis,omitempty"`
}

// Defaults filled in by Config.
const (
	DefaultMemory = 256 << 20
	DefaultPids   = 64
	defaultTmpfs  = 16 << 20
	defaultNoFile = 4096
	cpuPeriod     = 100000 // µs
)

// validID reports whether id is 1–128 of [A-Za-z0-9_.-] (no regexp: this
// package's init runs in every cvmd process, libcontainer's init included).
func validID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
		default:
			return false
		}
	}
	return true
}

// Validate reports what is wrong with s, naming the field.
func (s *Spec) Validate() error {
	if !validID(s.ID) {
		return fmt.Errorf("sandbox: spec id %q: want [A-Za-z0-9_.-]{1,128}", s.ID)
	}
	if len(s.Args) == 0 || s.Args[0] == "" {
		return fmt.Errorf("sandbox: spec %s: args empty", s.ID)
	}
	for i, m := range s.Mounts {
		if !filepath.IsAbs(m.Dest) || filepath.Clean(m.Dest) != m.Dest || m.Dest == "/" {
			return fmt.Errorf("sandbox: spec %s: mount %d dest %q: want a clean absolute path other than /", s.ID, i, m.Dest)
		}
		switch m.Kind {
		case Bind:
			if !filepath.IsAbs(m.Source) {
				return fmt.Errorf("sandbox: spec %s: mount %d source %q: want an absolute path", s.ID, i, m.Source)
			}
		case Tmpfs:
			if m.SizeBytes < 0 {
				return fmt.Errorf("sandbox: spec %s: mount %d size %d: negative", s.ID, i, m.SizeBytes)
			}
		default:
			return fmt.Errorf("sandbox: spec %s: mount %d kind %q: want bind or tmpfs", s.ID, i, m.Kind)
		}
	}
	for _, c := range s.Caps {
		if !strings.HasPrefix(c, "CAP_") {
			return fmt.Errorf("sandbox: spec %s: capability %q: want CAP_*", s.ID, c)
		}
	}
	if s.Limits.MemoryBytes < 0 || s.Limits.Pids < 0 || s.Limits.CPUMillis < 0 {
		return fmt.Errorf("sandbox: spec %s: negative limit %+v", s.ID, s.Limits)
	}
	if s.Rootfs != "" && (!filepath.IsAbs(s.Rootfs) || filepath.Clean(s.Rootfs) == "/") {
		// Binding the host's / would carry every submount, writable, into the view.
		return fmt.Errorf("sandbox: spec %s: rootfs %q: want an absolute directory other than /", s.ID, s.Rootfs)
	}
	if s.Seccomp != nil {
		if err := s.Seccomp.Validate(); err != nil {
			return fmt.Errorf("sandbox: spec %s: %w", s.ID, err)
		}
	}
	if s.Net != "" && s.Net != NetHost && !filepath.IsAbs(s.Net) {
		return fmt.Errorf("sandbox: spec %s: net %q: want \"\", %q or an absolute nsfs path", s.ID, s.Net, NetHost)
	}
	return nil
}

// Canonical returns the canonical encoding of s (JSON with the fields in
// declaration order), which is what Hash covers.
func (s *Spec) Canonical() ([]byte, error) { return json.Marshal(s) }

// Hash returns SHA-256 of the canonical encoding.
func (s *Spec) Hash() ([32]byte, error) {
	b, err := s.Canonical()
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// ConfigOptions are the Runtime's inputs to Config that are not part of the
// declared policy (where things live on this host).
type ConfigOptions struct {
	// Skeleton is the rootfs used when Spec.Rootfs is "".
	Skeleton string
	// CgroupRoot is the cgroup path (relative: nested under the caller's own
	// cgroup) under which the sandbox's cgroup is made, as CgroupRoot/ID.
	CgroupRoot string
}

// Config is the pure translation of s into a libcontainer configuration.
// It does not touch the file system (devices are resolved at Start).
func (s *Spec) Config(o ConfigOptions) (*configs.Config, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	rootfs := s.Rootfs
	if rootfs == "" {
		rootfs = o.Skeleton
	}
	if rootfs == "" || !filepath.IsAbs(rootfs) {
		return nil, fmt.Errorf("sandbox: spec %s: no absolute rootfs (got %q)", s.ID, rootfs)
	}
	hostname := s.Hostname
	if hostname == "" {
		hostname = s.ID
	}
	ns := configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}, {Type: configs.NEWIPC}, {Type: configs.NEWUTS}}
	var networks []*configs.Network
	switch s.Net {
	case "":
		ns = append(ns, configs.Namespace{Type: configs.NEWNET})
		networks = []*configs.Network{{Type: "loopback", Address: "127.0.0.1/8", Gateway: "localhost"}}
	case NetHost:
	default:
		ns = append(ns, configs.Namespace{Type: configs.NEWNET, Path: s.Net})
	}
	const noexec = unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV
	mounts := []*configs.Mount{
		{Source: "proc", Destination: "/proc", Device: "proc", Flags: noexec},
		{Source: "tmpfs", Destination: "/dev", Device: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_STRICTATIME, Data: "mode=755,size=65536k"},
		{Source: "sysfs", Destination: "/sys", Device: "sysfs", Flags: noexec | unix.MS_RDONLY},
	}
	for _, m := range s.Mounts {
		switch m.Kind {
		case Bind:
			flags := unix.MS_BIND | unix.MS_REC | unix.MS_NOSUID | unix.MS_NODEV
			if !m.Writable {
				flags |= unix.MS_RDONLY
			}
			if !m.Exec {
				flags |= unix.MS_NOEXEC
			}
			mounts = append(mounts, &configs.Mount{Source: m.Source, Destination: m.Dest, Device: "bind", Flags: flags})
		case Tmpfs:
			size := m.SizeBytes
			if size == 0 {
				size = defaultTmpfs
			}
			flags := unix.MS_NOSUID | unix.MS_NODEV
			if !m.Exec {
				flags |= unix.MS_NOEXEC
			}
			mode := "1777"
			if m.ReadOnly {
				flags |= unix.MS_RDONLY
				mode = "0555"
			}
			mounts = append(mounts, &configs.Mount{Source: "tmpfs", Destination: m.Dest, Device: "tmpfs", Flags: flags,
				Data: fmt.Sprintf("mode=%s,size=%d", mode, size)})
		}
	}
	mem := s.Limits.MemoryBytes
	if mem == 0 {
		mem = DefaultMemory
	}
	pids := s.Limits.Pids
	if pids == 0 {
		pids = DefaultPids
	}
	res := &cgroups.Resources{Memory: mem, MemorySwap: mem, PidsLimit: &pids}
	if s.Limits.CPUMillis > 0 {
		res.CpuPeriod = cpuPeriod
		res.CpuQuota = s.Limits.CPUMillis * cpuPeriod / 1000
	}
	for _, d := range specconv.AllowedDevices {
		res.Devices = append(res.Devices, &d.Rule)
	}
	caps := append([]string(nil), s.Caps...)
	prof := s.Seccomp
	if prof == nil {
		prof = FDOnlyProfile()
	}
	nofile := s.NoFile
	if nofile == 0 {
		nofile = defaultNoFile
	}
	cgroupPath := s.ID
	if o.CgroupRoot != "" {
		cgroupPath = strings.TrimSuffix(o.CgroupRoot, "/") + "/" + s.ID
	}
	return &configs.Config{
		Rootfs:            rootfs,
		Readonlyfs:        true,
		RootPropagation:   unix.MS_SLAVE | unix.MS_REC,
		ParentDeathSignal: int(unix.SIGKILL),
		Hostname:          hostname,
		Namespaces:        ns,
		Networks:          networks,
		Mounts:            mounts,
		Devices:           append([]*devconfig.Device(nil), specconv.AllowedDevices...),
		Capabilities:      &configs.Capabilities{Bounding: caps, Effective: caps, Permitted: caps},
		Cgroups:           &cgroups.Cgroup{Path: cgroupPath, Resources: res},
		NoNewPrivileges:   true,
		NoNewKeyring:      true,
		Seccomp:           prof.config(),
		Rlimits:           []configs.Rlimit{{Type: unix.RLIMIT_NOFILE, Hard: nofile, Soft: nofile}},
		MaskPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
			"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"},
		ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
	}, nil
}
