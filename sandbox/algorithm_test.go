package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func canonicalAlgorithm() *Algorithm {
	return &Algorithm{
		ID: "algo-1-1", Args: []string{"/cocos/algo", "--a", "1"}, Env: []string{"PATH=/usr/bin:/bin", "HTTP_PROXY=http://127.0.0.1:3128"},
		Cwd: "/cocos", UID: 65532, GID: 65532,
		BaseDirs: []string{"/usr", "/bin", "/lib", "/etc"}, Hide: []string{"/etc/cocos"},
		Mounts: []AlgorithmMount{
			{Source: "/run/cvmd/algorithms/algo-1-1/mnt/0", Dest: "/cocos/datasets", Exec: true},
			{Source: "/run/cvmd/algorithms/algo-1-1/mnt/1", Dest: "/cocos/algo", Exec: true},
		},
		Results: "/run/cvmd/algorithms/algo-1-1/results", Net: "/proc/1/fd/9",
		MemoryBytes: 1 << 30, Pids: 256, CPUMillis: 2000, TmpBytes: 256 << 20,
	}
}

// TestAlgorithmSpecGolden pins the algorithm sandbox's spec: any change to
// what an algorithm gets shows up in review as a diff of the golden file
// (regenerate with CVMD_UPDATE_GOLDEN=1).
func TestAlgorithmSpecGolden(t *testing.T) {
	s, err := AlgorithmSpec(canonicalAlgorithm())
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "algorithm_spec.golden.json")
	if os.Getenv("CVMD_UPDATE_GOLDEN") == "1" {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (regenerate with CVMD_UPDATE_GOLDEN=1)", err)
	}
	if strings.TrimSpace(string(want)) != strings.TrimSpace(string(got)) {
		t.Errorf("algorithm spec changed; review and regenerate with CVMD_UPDATE_GOLDEN=1:\n%s", got)
	}
}

func TestAlgorithmSpecInvariants(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Algorithm)
		wantErr string
	}{
		{"canonical", func(*Algorithm) {}, ""},
		{"root uid", func(a *Algorithm) { a.UID = 0 }, "must not be root"},
		{"root gid", func(a *Algorithm) { a.GID = 0 }, "must not be root"},
		{"host network", func(a *Algorithm) { a.Net = NetHost }, "host network"},
		{"relative base dir", func(a *Algorithm) { a.BaseDirs = []string{"usr"} }, "base dir"},
		{"base dir /", func(a *Algorithm) { a.BaseDirs = []string{"/"} }, "base dir"},
		{"hidden path outside base", func(a *Algorithm) { a.Hide = []string{"/run/secrets"} }, "not under a base dir"},
		{"relative mount dest", func(a *Algorithm) { a.Mounts[0].Dest = "cocos/x" }, "dest"},
		{"docker rootfs has no base dirs", func(a *Algorithm) { a.Rootfs = "/state/runner/runs/r/rootfs" }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := canonicalAlgorithm()
			tc.mod(a)
			s, err := AlgorithmSpec(a)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Caps) != 0 || s.Net == NetHost || s.UID == 0 || s.Seccomp == nil || s.Seccomp.Name != "algorithm" {
				t.Errorf("spec weaker than an algorithm's: %+v", s)
			}
			for _, m := range s.Mounts {
				if m.Writable && m.Kind == Bind && m.Dest != "/cocos/results" {
					t.Errorf("writable bind %s not declared", m.Dest)
				}
			}
			if a.Rootfs != "" && slices.ContainsFunc(s.Mounts, func(m Mount) bool { return m.Dest == "/usr" }) {
				t.Errorf("base dirs bound over a docker rootfs")
			}
			cfg, err := s.Config(ConfigOptions{Skeleton: "/skeleton", CgroupRoot: "cvmd"})
			if err != nil {
				t.Fatal(err)
			}
			if !cfg.NoNewPrivileges || !cfg.Readonlyfs || len(cfg.Capabilities.Bounding) != 0 {
				t.Errorf("config: nnp %v ro %v caps %v", cfg.NoNewPrivileges, cfg.Readonlyfs, cfg.Capabilities.Bounding)
			}
		})
	}
}

// TestAlgorithmProfileRefuses: the algorithm profile keeps every refusal of
// the untrusted profile and never allows what must stay refused.
func TestAlgorithmProfileRefuses(t *testing.T) {
	p := AlgorithmProfile()
	for _, n := range []string{"mount", "umount2", "pivot_root", "unshare", "setns", "ptrace", "bpf", "kexec_load", "init_module",
		"finit_module", "delete_module", "keyctl", "add_key", "request_key", "setuid", "setresuid", "userfaultfd", "perf_event_open", "open_by_handle_at"} {
		if !slices.Contains(p.Deny, n) {
			t.Errorf("%s not denied", n)
		}
		if slices.Contains(p.Allow, n) {
			t.Errorf("%s allowed", n)
		}
	}
	if !p.NoNamespaceClone {
		t.Error("clone with namespace flags allowed")
	}
}
