package runner

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/proto/control"
	"github.com/cvmd/cvmd/proto/logs"
	pb "github.com/cvmd/cvmd/proto/runner"
)

func TestCompPath(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "algo"), []byte("x"), 0o644)
	s := &Service{cfg: Config{ComputationDir: dir}}
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"algo", "computation/algo", true},
		{"/cocos/algo", "computation/algo", true}, // Cocos's agent sends absolute paths
		{"../algo", "", false},
		{"", "", false},
		{"missing", "", false},
		{"a/../algo", "", false},
	} {
		got, err := s.compPath("algorithm_path", tc.in, true)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("compPath(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func tarBytes(t testing.TB, hs []*tar.Header, data map[string]string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		h.Size = int64(len(data[h.Name]))
		tw.WriteHeader(h)
		tw.Write([]byte(data[h.Name]))
	}
	tw.Close()
	return b.Bytes()
}

// TestUnpackImageRefusesEscapes: a layer cannot write outside the rootfs,
// whatever its names and links say.
func TestUnpackImageRefusesEscapes(t *testing.T) {
	layer := tarBytes(t, []*tar.Header{
		{Name: "../../outside", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: "/"},
		{Name: "evil/etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o600},
		{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o4755},
	}, map[string]string{"../../outside": "x", "evil/etc/passwd": "root::0:0", "bin/tool": "y"})
	cfg := `{"config":{"Cmd":["/bin/tool"]}}`
	man := `[{"Config":"config.json","Layers":["l/layer.tar"]}]`
	archive := tarBytes(t, []*tar.Header{
		{Name: "config.json", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "l/layer.tar", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "manifest.json", Typeflag: tar.TypeReg, Mode: 0o644},
	}, map[string]string{"config.json": cfg, "l/layer.tar": string(layer), "manifest.json": man})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "image.tar"), archive, 0o644)
	for _, d := range []string{"blobs", "work/rootfs"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	_, err := unpackImage(filepath.Join(dir, "image.tar"), filepath.Join(dir, "blobs"), filepath.Join(dir, "work/rootfs"))
	if err == nil {
		t.Log("unpacked (the escaping entries must have been contained)")
	} else {
		t.Logf("refused: %v", err)
	}
	for _, p := range []string{"outside", "work/outside", "etc/passwd"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s written outside the rootfs", p)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "work/rootfs/bin/tool")); err == nil && fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("setuid bit kept: %v", fi.Mode())
	}
	if _, err := os.Lstat(filepath.Join(dir, "work/rootfs/dev/sda")); err == nil {
		t.Errorf("device node created")
	}
}

func FuzzUnpackImage(f *testing.F) {
	f.Add([]byte(`[{"Config":"c.json","Layers":["l.tar"]}]`), []byte(`{"config":{}}`), []byte{})
	f.Fuzz(func(t *testing.T, manifest, config, layer []byte) {
		archive := tarBytes(t, []*tar.Header{
			{Name: "manifest.json", Typeflag: tar.TypeReg, Mode: 0o644},
			{Name: "c.json", Typeflag: tar.TypeReg, Mode: 0o644},
			{Name: "l.tar", Typeflag: tar.TypeReg, Mode: 0o644},
		}, map[string]string{"manifest.json": string(manifest), "c.json": string(config), "l.tar": string(layer)})
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "a.tar"), archive, 0o644)
		os.MkdirAll(filepath.Join(dir, "b"), 0o755)
		os.MkdirAll(filepath.Join(dir, "r", "root"), 0o755)
		unpackImage(filepath.Join(dir, "a.tar"), filepath.Join(dir, "b"), filepath.Join(dir, "r", "root"))
		ents, _ := os.ReadDir(filepath.Join(dir, "r"))
		if len(ents) != 1 {
			t.Fatalf("something written next to the rootfs: %v", ents)
		}
	})
}

type putRecorder struct{ recs []*logs.Record }

func (p *putRecorder) Put(r *logs.Record) bool { p.recs = append(p.recs, r); return true }

func TestSinkEventsOriginator(t *testing.T) {
	var p putRecorder
	sinkEvents{sink: &p}.Event("AlgorithmRun", "Warning", "computation_id", "c7", "stderr", "oops")
	if len(p.recs) != 1 {
		t.Fatalf("%d records", len(p.recs))
	}
	ev := p.recs[0].GetEvent()
	if ev.GetOriginator() != Originator || ev.GetComputationId() != "c7" || ev.GetEventType() != "AlgorithmRun" || ev.GetStatus() != "Warning" || string(ev.GetDetails()) != `{"stderr":"oops"}` {
		t.Errorf("event %v", ev)
	}
}

// TestRunRefusesBadComputationIDs: the id check (characters by regexp,
// length apart) refuses before anything runs.
func TestRunRefusesBadComputationIDs(t *testing.T) {
	s := &Service{cfg: Config{ComputationDir: t.TempDir()}}
	tests := []struct {
		name, id string
		wantID   bool // the error is about computation_id
	}{
		{"empty", "", true},
		{"129 chars", strings.Repeat("a", 129), true},
		{"slash", "a/b", true},
		{"newline at end", "abc\n", true},
		{"non-ASCII", "é", true},
		{"128 chars", strings.Repeat("a", 128), false},
		{"all classes", "Az09_.:-", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Run(context.Background(), &pb.RunRequest{AlgoType: TypeBin, ComputationId: tc.id, AlgorithmPath: "missing"})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Run: %v, want InvalidArgument", err)
			}
			if got := strings.Contains(err.Error(), "computation_id"); got != tc.wantID {
				t.Fatalf("Run(%q): %v; about computation_id = %v, want %v", tc.id, err, got, tc.wantID)
			}
		})
	}
}

// TestNewRemovesAKilledRunnersWorkDirs: a runner killed with -9 leaves its
// run's work dir; the next runner, which may be asked to run the same
// computation (same dir name), starts without it.
func TestNewRemovesAKilledRunnersWorkDirs(t *testing.T) {
	work, comp := t.TempDir(), t.TempDir()
	left := filepath.Join(work, "runs", "c1-1")
	if err := os.MkdirAll(left, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(left, "algo"), []byte("x"), 0o555)
	if _, err := New(Config{WorkDir: work, ComputationDir: comp, Send: func(*control.Message, map[string]*os.File) error { return nil }}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Fatalf("the killed runner's work dir is still there: %v", err)
	}
}
