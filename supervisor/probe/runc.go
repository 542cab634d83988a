package probe

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/sandbox"
)

// runcChild is where runc's bundle binds the child's binary.
const runcChild = "/cvmd"

// writeRuncBundle writes an OCI bundle in dir (config.json and an empty
// rootfs) whose container is the sandbox of spec as cvmd builds it: the
// libcontainer configuration sandbox.Spec.Config makes, translated field by
// field (namespaces, mounts, cgroup limits and device rules, seccomp rules,
// capabilities, rlimits, masked and read-only paths, no new privileges,
// read-only root). The one difference is where the child's binary comes
// from: cvmd's children re-execute the sealed binary through
// /proc/self/exe, runc's runs file, bound read-only at /cvmd.
func writeRuncBundle(dir string, spec *sandbox.Spec, cgroupRoot, file string) error {
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	cfg, err := spec.Config(sandbox.ConfigOptions{Skeleton: rootfs, CgroupRoot: cgroupRoot})
	if err != nil {
		return err
	}
	args := append([]string{runcChild}, spec.Args[1:]...)
	oci, err := ociSpec(cfg, args, spec.Env)
	if err != nil {
		return err
	}
	oci.Mounts = append(oci.Mounts, specs.Mount{Destination: runcChild, Type: "bind", Source: file, Options: []string{"bind", "ro", "nosuid", "nodev"}})
	b, err := json.MarshalIndent(oci, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
}

// ociSpec translates a libcontainer configuration into the runtime spec
// that runc's specconv turns back into the same configuration.
func ociSpec(cfg *configs.Config, args, env []string) (*specs.Spec, error) {
	caps := cfg.Capabilities
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args, Env: env, Cwd: "/",
			NoNewPrivileges: cfg.NoNewPrivileges,
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps.Bounding, Effective: caps.Effective, Permitted: caps.Permitted},
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: cfg.Readonlyfs},
		Hostname: cfg.Hostname,
		Linux: &specs.Linux{
			CgroupsPath:       cfg.Cgroups.Path,
			RootfsPropagation: "rslave",
			MaskedPaths:       cfg.MaskPaths,
			ReadonlyPaths:     cfg.ReadonlyPaths,
		},
	}
	if cfg.RootPropagation != unix.MS_SLAVE|unix.MS_REC {
		return nil, fmt.Errorf("runc bundle: root propagation %#x not translated", cfg.RootPropagation)
	}
	for _, r := range cfg.Rlimits {
		if r.Type != unix.RLIMIT_NOFILE {
			return nil, fmt.Errorf("runc bundle: rlimit %d not translated", r.Type)
		}
		s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: r.Hard, Soft: r.Soft})
	}
	for _, ns := range cfg.Namespaces {
		t, ok := map[configs.NamespaceType]specs.LinuxNamespaceType{configs.NEWNS: specs.MountNamespace, configs.NEWPID: specs.PIDNamespace,
			configs.NEWIPC: specs.IPCNamespace, configs.NEWUTS: specs.UTSNamespace, configs.NEWNET: specs.NetworkNamespace}[ns.Type]
		if !ok {
			return nil, fmt.Errorf("runc bundle: namespace %s not translated", ns.Type)
		}
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: t, Path: ns.Path})
	}
	for _, m := range cfg.Mounts {
		opts, err := mountOptions(m)
		if err != nil {
			return nil, err
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: m.Device, Source: m.Source, Options: opts})
	}
	res := cfg.Cgroups.Resources
	s.Linux.Resources = &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &res.Memory, Swap: &res.MemorySwap},
		Pids:   &specs.LinuxPids{Limit: res.PidsLimit},
	}
	if res.CpuQuota != 0 {
		s.Linux.Resources.CPU = &specs.LinuxCPU{Quota: &res.CpuQuota, Period: &res.CpuPeriod}
	}
	// runc allows its default devices (the same list specconv.AllowedDevices
	// gives cvmd's config) after these rules; deny everything else first.
	s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}
	if cfg.Seccomp != nil {
		sc, err := ociSeccomp(cfg.Seccomp)
		if err != nil {
			return nil, err
		}
		s.Linux.Seccomp = sc
	}
	return s, nil
}

func mountOptions(m *configs.Mount) ([]string, error) {
	var opts []string
	flags := m.Flags
	if flags&unix.MS_BIND != 0 {
		opts = append(opts, map[bool]string{true: "rbind", false: "bind"}[flags&unix.MS_REC != 0])
		flags &^= unix.MS_BIND | unix.MS_REC
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{unix.MS_RDONLY, "ro"}, {unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"}, {unix.MS_NOEXEC, "noexec"}, {unix.MS_STRICTATIME, "strictatime"}} {
		if flags&f.bit != 0 {
			opts = append(opts, f.name)
			flags &^= f.bit
		}
	}
	if flags != 0 {
		return nil, fmt.Errorf("runc bundle: mount %s: flags %#x not translated", m.Destination, flags)
	}
	if m.Data != "" {
		opts = append(opts, strings.Split(m.Data, ",")...)
	}
	return opts, nil
}

func ociSeccomp(c *configs.Seccomp) (*specs.LinuxSeccomp, error) {
	action := func(a configs.Action) (specs.LinuxSeccompAction, error) {
		switch a {
		case configs.Allow:
			return specs.ActAllow, nil
		case configs.Errno:
			return specs.ActErrno, nil
		}
		return "", fmt.Errorf("runc bundle: seccomp action %v not translated", a)
	}
	def, err := action(c.DefaultAction)
	if err != nil {
		return nil, err
	}
	s := &specs.LinuxSeccomp{DefaultAction: def, DefaultErrnoRet: c.DefaultErrnoRet}
	for _, a := range c.Architectures {
		s.Architectures = append(s.Architectures, specs.Arch("SCMP_ARCH_"+strings.ToUpper(a)))
	}
	for _, sc := range c.Syscalls {
		act, err := action(sc.Action)
		if err != nil {
			return nil, err
		}
		rule := specs.LinuxSyscall{Names: []string{sc.Name}, Action: act, ErrnoRet: sc.ErrnoRet}
		for _, a := range sc.Args {
			op, ok := map[configs.Operator]specs.LinuxSeccompOperator{configs.EqualTo: specs.OpEqualTo, configs.MaskEqualTo: specs.OpMaskedEqual}[a.Op]
			if !ok {
				return nil, fmt.Errorf("runc bundle: seccomp operator %v not translated", a.Op)
			}
			rule.Args = append(rule.Args, specs.LinuxSeccompArg{Index: a.Index, Value: a.Value, ValueTwo: a.ValueTwo, Op: op})
		}
		s.Syscalls = append(s.Syscalls, rule)
	}
	return s, nil
}
