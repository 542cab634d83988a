package algosandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/sandbox"
)

var logicalPathTests = []struct {
	in, kind, rel string
	ok            bool
}{
	{"computation/algo", "computation", "algo", true},
	{"computation/datasets", "computation", "datasets", true},
	{"work/runs/c1-1/venv", "work", "runs/c1-1/venv", true},
	{"cvmd", "cvmd", "", true},
	{"computation", "", "", false},
	{"computation/", "", "", false},
	{"computation/.", "", "", false},
	{"computation/../agent", "", "", false},
	{"computation/a/../../x", "", "", false},
	{"work/a//b", "", "", false},
	{"work/./a", "", "", false},
	{"/etc/cocos", "", "", false},
	{"computation//etc", "", "", false},
	{"agent/state", "", "", false},
	{"cvmd/x", "", "", false},
	{"", "", "", false},
}

func TestLogicalPath(t *testing.T) {
	for _, tc := range logicalPathTests {
		kind, rel, err := logicalPath(tc.in)
		if (err == nil) != tc.ok || kind != tc.kind || rel != tc.rel {
			t.Errorf("logicalPath(%q) = %q, %q, %v; want %q, %q, ok=%v", tc.in, kind, rel, err, tc.kind, tc.rel, tc.ok)
		}
	}
}

func FuzzLogicalPath(f *testing.F) {
	for _, tc := range logicalPathTests {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, p string) {
		kind, rel, err := logicalPath(p)
		if err != nil {
			return
		}
		if kind == srcCvmd {
			return
		}
		if rel == "" || strings.HasPrefix(rel, "/") || filepath.Clean(rel) != rel {
			t.Fatalf("accepted %q as %q", p, rel)
		}
		for _, c := range strings.Split(rel, "/") {
			if c == ".." || c == "." || c == "" {
				t.Fatalf("accepted %q with component %q", p, c)
			}
		}
	})
}

// newTestHandler makes a handler over temp dirs without a runtime that
// would ever start anything (validate only).
func newTestHandler(t *testing.T) (*Sandboxes, string) {
	dir := t.TempDir()
	for _, d := range []string{"computation/datasets", "computation/results", "runner/runs/r1/venv"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "computation/algo"), []byte("x"), 0o644)
	os.Symlink("/etc", filepath.Join(dir, "computation/link"))
	os.Symlink("../agent", filepath.Join(dir, "runner/escape"))
	a, err := New(Config{Runtime: &sandbox.Runtime{}, ComputationDir: filepath.Join(dir, "computation"),
		WorkDir: filepath.Join(dir, "runner"), RunDir: filepath.Join(dir, "run"), Cvmd: "/proc/self/exe",
		Max: Limits{MemoryBytes: 1 << 30, Pids: 100}})
	if err != nil {
		t.Fatal(err)
	}
	return a, dir
}

func TestValidateRequest(t *testing.T) {
	a, _ := newTestHandler(t)
	ok := func() *control.SandboxRequest {
		return &control.SandboxRequest{Args: []string{"/cocos/algo"}, Cwd: "/cocos", Env: []string{"PATH=/bin"},
			Mounts:  []*control.Mount{{Source: "computation/algo", Destination: "/cocos/algo"}, {Source: "computation/datasets", Destination: "/cocos/datasets"}},
			Results: "computation/results"}
	}
	tests := []struct {
		name    string
		mod     func(*control.SandboxRequest)
		wantErr string
	}{
		{"a good request", func(*control.SandboxRequest) {}, ""},
		{"less memory than the maximum", func(r *control.SandboxRequest) { r.Limits = &control.Limits{MemoryBytes: 1 << 20} }, ""},
		{"more memory than the maximum", func(r *control.SandboxRequest) { r.Limits = &control.Limits{MemoryBytes: 2 << 30} }, "limits.memory_bytes"},
		{"more pids than the maximum", func(r *control.SandboxRequest) { r.Limits = &control.Limits{Pids: 101} }, "limits.pids"},
		{"longer than the wall clock maximum", func(r *control.SandboxRequest) { r.Limits = &control.Limits{WallClockMs: 1 << 40} }, "limits.wall_clock_ms"},
		{"no args", func(r *control.SandboxRequest) { r.Args = nil }, "args"},
		{"proxy env from the runner", func(r *control.SandboxRequest) { r.Env = append(r.Env, "https_proxy=http://evil") }, "set by the supervisor"},
		{"bad env", func(r *control.SandboxRequest) { r.Env = append(r.Env, "NOEQUALS") }, "env[1]"},
		{"relative cwd", func(r *control.SandboxRequest) { r.Cwd = "cocos" }, "cwd"},
		{"absolute mount source", func(r *control.SandboxRequest) { r.Mounts[0].Source = "/etc/cocos" }, "mounts[0].source"},
		{"dotdot mount source", func(r *control.SandboxRequest) { r.Mounts[0].Source = "computation/../agent" }, "mounts[0].source"},
		{"symlink in mount source", func(r *control.SandboxRequest) { r.Mounts[0].Source = "computation/link" }, "mounts[0]"},
		{"symlink escaping the work dir", func(r *control.SandboxRequest) { r.Mounts[0].Source = "work/escape" }, "mounts[0]"},
		{"missing mount source", func(r *control.SandboxRequest) { r.Mounts[0].Source = "computation/nope" }, "mounts[0]"},
		{"writable computation mount", func(r *control.SandboxRequest) { r.Mounts[1].Writable = true }, "only work/"},
		{"writable work mount", func(r *control.SandboxRequest) {
			r.Mounts = append(r.Mounts, &control.Mount{Source: "work/runs/r1/venv", Destination: "/cocos/venv", Writable: true})
		}, ""},
		{"mount over /proc", func(r *control.SandboxRequest) { r.Mounts[0].Destination = "/proc/self" }, "destination"},
		{"mount over /etc", func(r *control.SandboxRequest) { r.Mounts[0].Destination = "/etc" }, "destination"},
		{"mount twice", func(r *control.SandboxRequest) { r.Mounts[1].Destination = "/cocos/algo" }, "mounted twice"},
		{"results in the work dir", func(r *control.SandboxRequest) { r.Results = "work/runs" }, "results"},
		{"results over a mount", func(r *control.SandboxRequest) { r.ResultsDestination = "/cocos/algo" }, "results_destination"},
		{"rootfs outside work", func(r *control.SandboxRequest) { r.Rootfs = "computation/datasets" }, "rootfs"},
		{"rootfs in work", func(r *control.SandboxRequest) { r.Rootfs = "work/runs/r1" }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := ok()
			tc.mod(r)
			p, err := a.validate(r, "algo-test")
			if p != nil {
				defer func() {
					for _, f := range p.opened {
						f.Close()
					}
				}()
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if _, err := sandbox.AlgorithmSpec(p.spec); err != nil {
					t.Fatalf("spec: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to name %q", err, tc.wantErr)
			}
		})
	}
}

func TestCleanRunDirUnmountsLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount)")
	}
	dir := filepath.Join(t.TempDir(), "run")
	res := filepath.Join(dir, "algo-1-1", "results")
	if err := mountResults(res, 1<<20, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(res, "x"), []byte("x"), 0o644)
	if err := cleanRunDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("run dir still there: %v", err)
	}
	b, _ := os.ReadFile("/proc/thread-self/mountinfo")
	if strings.Contains(string(b), dir) {
		t.Errorf("mount left under %s", dir)
	}
}

// FuzzValidateRequest: whatever the runner sends, validate does not panic,
// and what it accepts stays within the maximums and mounts nothing writable
// outside work/.
func FuzzValidateRequest(f *testing.F) {
	seed := &control.SandboxRequest{Args: []string{"/cocos/algo"}, Env: []string{"PATH=/bin"},
		Mounts:  []*control.Mount{{Source: "computation/algo", Destination: "/cocos/algo"}, {Source: "work/runs/r1/venv", Destination: "/cocos/venv", Writable: true}},
		Results: "computation/results", Limits: &control.Limits{MemoryBytes: 1 << 20}}
	b, _ := proto.Marshal(seed)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req control.SandboxRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		a, _ := newTestHandler(t)
		p, err := a.validate(&req, "algo-fuzz")
		if err != nil {
			return
		}
		defer func() {
			for _, f := range p.opened {
				f.Close()
			}
		}()
		if p.spec.MemoryBytes > a.cfg.Max.MemoryBytes || p.spec.Pids > a.cfg.Max.Pids || p.wall > a.cfg.Max.WallClock {
			t.Fatalf("limits above the maximum: %+v", p.spec)
		}
		for i, m := range req.GetMounts() {
			if m.GetWritable() && !strings.HasPrefix(m.GetSource(), "work/") {
				t.Fatalf("mount %d writable from %q", i, m.GetSource())
			}
		}
		if _, err := sandbox.AlgorithmSpec(p.spec); err != nil {
			t.Fatalf("accepted request makes no spec: %v", err)
		}
	})
}
