package sandbox

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs"
)

func TestSpecConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    Spec
		wantErr string
		check   func(t *testing.T, c *configs.Config)
	}{
		{name: "defaults are restrictive", spec: Spec{ID: "a", Args: []string{"/x"}}, check: func(t *testing.T, c *configs.Config) {
			if !c.Readonlyfs || !c.NoNewPrivileges || c.Rootfs != "/skel" || c.ParentDeathSignal != 9 {
				t.Errorf("rootfs %q ro %v nnp %v pdeath %d", c.Rootfs, c.Readonlyfs, c.NoNewPrivileges, c.ParentDeathSignal)
			}
			if !c.Namespaces.Contains(configs.NEWNET) || c.Namespaces.PathOf(configs.NEWNET) != "" {
				t.Error("want a fresh network namespace")
			}
			if len(c.Capabilities.Effective) != 0 {
				t.Errorf("caps %v", c.Capabilities.Effective)
			}
			if c.Cgroups.Path != "root/a" || c.Cgroups.Resources.Memory != DefaultMemory || *c.Cgroups.Resources.PidsLimit != DefaultPids {
				t.Errorf("cgroup %q %+v", c.Cgroups.Path, c.Cgroups.Resources)
			}
			if c.Seccomp == nil || c.Seccomp.DefaultAction != configs.Errno {
				t.Error("want a deny-by-default seccomp filter")
			}
		}},
		{name: "host network", spec: Spec{ID: "e", Args: []string{"/x"}, Net: NetHost}, check: func(t *testing.T, c *configs.Config) {
			if c.Namespaces.Contains(configs.NEWNET) {
				t.Error("host network must not have a network namespace")
			}
		}},
		{name: "netns path", spec: Spec{ID: "e", Args: []string{"/x"}, Net: "/proc/1/ns/net"}, check: func(t *testing.T, c *configs.Config) {
			if c.Namespaces.PathOf(configs.NEWNET) != "/proc/1/ns/net" {
				t.Error("netns path lost")
			}
		}},
		{name: "binds and tmpfs", spec: Spec{ID: "m", Args: []string{"/x"}, Mounts: []Mount{{Kind: Bind, Source: "/s", Dest: "/d", Writable: true}, {Kind: Tmpfs, Dest: "/tmp", SizeBytes: 1 << 20}}},
			check: func(t *testing.T, c *configs.Config) {
				var bind, tmp *configs.Mount
				for _, m := range c.Mounts {
					switch m.Destination {
					case "/d":
						bind = m
					case "/tmp":
						tmp = m
					}
				}
				if bind == nil || bind.Flags&1 != 0 /* MS_RDONLY */ || tmp == nil || !strings.Contains(tmp.Data, "size=1048576") {
					t.Errorf("bind %+v tmp %+v", bind, tmp)
				}
			}},
		{name: "cpu quota", spec: Spec{ID: "c", Args: []string{"/x"}, Limits: Limits{CPUMillis: 500}}, check: func(t *testing.T, c *configs.Config) {
			if c.Cgroups.Resources.CpuQuota != 50000 || c.Cgroups.Resources.CpuPeriod != 100000 {
				t.Errorf("quota %d period %d", c.Cgroups.Resources.CpuQuota, c.Cgroups.Resources.CpuPeriod)
			}
		}},
		{name: "bad id", spec: Spec{ID: "a/b", Args: []string{"/x"}}, wantErr: "spec id"},
		{name: "no args", spec: Spec{ID: "a"}, wantErr: "args empty"},
		{name: "relative dest", spec: Spec{ID: "a", Args: []string{"/x"}, Mounts: []Mount{{Kind: Tmpfs, Dest: "tmp"}}}, wantErr: "dest"},
		{name: "unknown kind", spec: Spec{ID: "a", Args: []string{"/x"}, Mounts: []Mount{{Kind: "overlay", Dest: "/o"}}}, wantErr: "kind"},
		{name: "bad cap", spec: Spec{ID: "a", Args: []string{"/x"}, Caps: []string{"SYS_ADMIN"}}, wantErr: "capability"},
		{name: "host root as rootfs", spec: Spec{ID: "a", Args: []string{"/x"}, Rootfs: "/"}, wantErr: "rootfs"},
		{name: "bad net", spec: Spec{ID: "a", Args: []string{"/x"}, Net: "egress"}, wantErr: "net"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.spec.Config(ConfigOptions{Skeleton: "/skel", CgroupRoot: "root"})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestSpecHashStable(t *testing.T) {
	a := Spec{ID: "a", Args: []string{"/x"}, Seccomp: FDOnlyProfile()}
	b := Spec{ID: "a", Args: []string{"/x"}, Seccomp: FDOnlyProfile()}
	ha, _ := a.Hash()
	hb, _ := b.Hash()
	if ha != hb {
		t.Fatal("same spec, different hash")
	}
	b.Limits.Pids = 1
	if hb, _ = b.Hash(); ha == hb {
		t.Fatal("different spec, same hash")
	}
}

func TestProfileDenyWins(t *testing.T) {
	p := &Profile{Allow: []string{"mount", "read"}, Deny: []string{"mount"}}
	for _, s := range p.config().Syscalls {
		if s.Name == "mount" && s.Action == configs.Allow {
			t.Fatal("mount allowed despite Deny")
		}
	}
}

// FuzzSpecConfig: any Spec decoded from JSON either fails Validate, or
// translates into a configuration that keeps the invariants (read-only
// root, no new privileges, a seccomp filter, limits set, absolute mounts).
func FuzzSpecConfig(f *testing.F) {
	for _, s := range []Spec{
		{ID: "a", Args: []string{"/x"}},
		{ID: "e", Args: []string{"/x"}, Net: NetHost, Seccomp: NetworkProfile()},
		{ID: "m", Args: []string{"/x"}, Mounts: []Mount{{Kind: Bind, Source: "/s", Dest: "/d", Writable: true}, {Kind: Tmpfs, Dest: "/tmp", SizeBytes: 1 << 20}}},
		{ID: "c", Args: []string{"/x"}, Limits: Limits{CPUMillis: 500, Pids: 3, MemoryBytes: 1 << 20}, Caps: []string{"CAP_CHOWN"}},
	} {
		b, _ := s.Canonical()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Spec
		if json.Unmarshal(data, &s) != nil {
			return
		}
		c, err := s.Config(ConfigOptions{Skeleton: "/skel", CgroupRoot: "root"})
		if s.Validate() != nil {
			if err == nil {
				t.Fatal("invalid spec translated")
			}
			return
		}
		if err != nil {
			t.Fatalf("valid spec refused: %v", err)
		}
		if !c.Readonlyfs || !c.NoNewPrivileges || c.Seccomp == nil || c.Cgroups.Resources.Memory <= 0 || *c.Cgroups.Resources.PidsLimit <= 0 {
			t.Fatalf("invariants broken: %+v", c)
		}
		for _, m := range c.Mounts {
			if !strings.HasPrefix(m.Destination, "/") {
				t.Fatalf("relative mount destination %q", m.Destination)
			}
		}
	})
}
