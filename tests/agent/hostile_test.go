package agent

import (
	"archive/zip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/cocos/zipdir"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/config"
)

// writeZip writes a zip at p whose entries are name → size bytes of zeros
// (deflated: a few KiB for MiBs, the shape of a zip bomb).
func writeZip(t *testing.T, p string, entries map[string]int) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	zero := make([]byte, 1<<20)
	for name, size := range entries {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate})
		if err != nil {
			t.Fatal(err)
		}
		for left := size; left > 0; left -= len(zero) {
			w.Write(zero[:min(left, len(zero))])
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// datasetsEmpty fails unless the datasets dir holds exactly want.
func (w *world) datasetsHold(t *testing.T, want ...string) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(w.compDir, "datasets"))
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("datasets dir holds %v, want %v", got, want)
	}
}

// TestZipEntryCannotTakeAnotherDatasetsName: provider A's zipped dataset
// holding an entry named like provider B's declared dataset is refused with
// nothing installed, B's upload then succeeds, and A can send a proper one.
func TestZipEntryCannotTakeAnotherDatasetsName(t *testing.T) {
	testutil.CheckLeaks(t)
	w := &world{dir: t.TempDir()}
	w.setup(t, "#!/bin/sh\ncat datasets/b.csv > results/b.txt\n")
	w.h = agenttest.Start(t, agenttest.Options{})
	w.useHarness()
	hostile := filepath.Join(w.dir, "a.zip")
	writeZip(t, hostile, map[string]int{"b.csv": 10, "mine.csv": 10})
	proper := filepath.Join(w.dir, "proper", "a.zip")
	os.Mkdir(filepath.Dir(proper), 0o755)
	writeZip(t, proper, map[string]int{"mine.csv": 10})
	for _, tc := range []struct {
		name string
		zip  string
	}{{"hostile", hostile}, {"proper", proper}} {
		t.Run(tc.name, func(t *testing.T) {
			m := agenttest.NewManifest("comp-"+tc.name, w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
				{Filename: "a.zip", Hash: agenttest.HashFile(t, tc.zip), Owner: w.dataA},
				{Filename: "b.csv", Hash: agenttest.HashFile(t, w.dsB), Owner: w.dataB},
			}, w.cons1)
			if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
				t.Fatalf("start: %v %v", err, res)
			}
			w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
			if tc.name == "hostile" {
				w.wantCVMError(t, false, `dataset "a.zip": archive entry "b.csv" has the name of declared dataset "b.csv"`, "data", tc.zip, w.dataA.KeyFile, "-d")
				w.incomingEmpty(t)
				w.datasetsHold(t)
				w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
				w.datasetsHold(t, "b.csv")
				if _, err := w.control.Stop(context.Background(), &agentctl.StopRequest{ComputationId: "comp-hostile"}); err != nil {
					t.Fatal(err)
				}
				return
			}
			w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
			w.mustCVM(t, false, "data", tc.zip, w.dataA.KeyFile, "-d")
			w.waitState(t, "ConsumingResults")
		})
	}
}

// mountTmpfs mounts a tmpfs of size bytes at dir until the test ends: a
// small disk to fill.
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	os.MkdirAll(dir, 0o755)
	if err := unix.Mount("cvmd-test", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestZipBombsAndFullDisks: a zip that expands past max_unzipped_bytes, one
// that would take the disk below the free-space floor, and a plain upload
// larger than the disk are each stopped as they cross the limit, with
// nothing left behind, and refused with ResourceExhausted naming the
// dataset and the limit, never an internal error. The computation carries
// on: the real datasets are accepted afterwards.
func TestZipBombsAndFullDisks(t *testing.T) {
	testutil.CheckLeaks(t)
	const disk, floor = 48 << 20, 8 << 20
	w := &world{dir: t.TempDir()}
	w.setup(t, "#!/bin/sh\nls datasets > results/ls.txt\n")
	comp := filepath.Join(w.dir, "disk")
	mountTmpfs(t, comp, disk)
	w.h = agenttest.Start(t, agenttest.Options{Settings: &config.AgentSettings{
		ComputationDir: comp, MinFreeBytes: floor, MaxUnzippedBytes: 64 << 20}})
	w.useHarness()

	bomb := filepath.Join(w.dir, "bomb.zip") // 128 MiB of zeros in one entry (~130 KiB): past max_unzipped_bytes
	writeZip(t, bomb, map[string]int{"zeros.bin": 128 << 20})
	// 42 MiB, under max_unzipped_bytes and the 48 MiB disk, but past its floor.
	wide := map[string]int{}
	for i := range 3 {
		wide[fmt.Sprintf("part%d.bin", i)] = 14 << 20
	}
	disker := filepath.Join(w.dir, "disker.zip")
	writeZip(t, disker, wide)
	huge := filepath.Join(w.dir, "huge.bin") // random, so no compression helps: larger than the disk
	b := make([]byte, disk)
	rand.Read(b)
	os.WriteFile(huge, b, 0o644)

	m := agenttest.NewManifest("comp-bomb", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
		{Filename: "bomb.zip", Hash: agenttest.HashFile(t, bomb), Owner: w.dataA},
		{Filename: "disker.zip", Hash: agenttest.HashFile(t, disker), Owner: w.dataA},
		{Filename: "huge.bin", Hash: agenttest.HashFile(t, huge), Owner: w.dataB},
	}, w.cons1)
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	t.Run("zip bomb past max_unzipped_bytes", func(t *testing.T) {
		w.wantCVMError(t, false, `dataset "bomb.zip": upload exceeds the agent's size limit (max_zip_entries 10000, max_unzipped_bytes 67108864)`,
			"data", bomb, w.dataA.KeyFile, "-d")
	})
	t.Run("zip that would cross the free-space floor", func(t *testing.T) {
		w.wantCVMError(t, false, `dataset "disker.zip": not enough free disk space in the agent: extracting it would leave less than min_free_bytes 8388608 free`,
			"data", disker, w.dataA.KeyFile, "-d")
	})
	t.Run("upload larger than the disk", func(t *testing.T) {
		w.wantCVMError(t, false, `not enough free disk space in the agent: receiving dataset huge.bin would leave less than min_free_bytes 8388608 free`,
			"data", huge, w.dataB.KeyFile)
	})
	w.incomingEmpty(t)
	w.datasetsHold(t)
	var st unix.Statfs_t
	unix.Statfs(comp, &st)
	if free := int64(st.Bavail) * int64(st.Bsize); free < disk-floor {
		t.Errorf("%d bytes free on the %d-byte disk after the refusals: something was left", free, disk)
	}
	if s := w.state(t); s != "ReceivingData" {
		t.Fatalf("state %s after the refusals, want ReceivingData", s)
	}
}

// eventLog records the agent's events.
type eventLog struct {
	mu  sync.Mutex
	evs []string // "type status details"
}

func (l *eventLog) Event(typ, status string, details ...any) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var d []string
	for _, x := range details {
		if raw, ok := x.(json.RawMessage); ok {
			x = string(raw)
		}
		d = append(d, fmt.Sprint(x))
	}
	l.evs = append(l.evs, typ+" "+status+" "+strings.Join(d, " "))
	return true
}

func (l *eventLog) find(prefix string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.evs {
		if strings.HasPrefix(e, prefix) {
			return e
		}
	}
	return ""
}

// hostileNamesScript writes results whose names a consumer's tools would
// misread: a Windows zip-slip, an option, a newline, a colon, a bidi
// override; and one clean file.
const hostileNamesScript = `#!/bin/sh
printf slip > 'results/..\..\..\evil.txt'
printf dash > results/-rf
printf nl > "results/$(printf 'line\nbreak')"
printf colon > 'results/C:evil'
printf bidi > "results/$(printf '\342\200\256txt.exe')"
printf ok > results/ok.txt
`

// TestHostileResultNames: whatever names an algorithm gives its results,
// every name in results.zip is a clean relative path, the content is kept
// under the rewritten name, and a Warning event says what was renamed.
func TestHostileResultNames(t *testing.T) {
	testutil.CheckLeaks(t)
	events := &eventLog{}
	w := &world{dir: t.TempDir()}
	w.setup(t, hostileNamesScript)
	w.h = agenttest.Start(t, agenttest.Options{Events: events})
	w.useHarness()
	m := agenttest.NewManifest("comp-names", w.algoP, agenttest.HashFile(t, w.algo), "bin", nil, w.cons1)
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.waitState(t, "ConsumingResults")
	out := filepath.Join(w.dir, "out")
	os.Mkdir(out, 0o755)
	w.mustCVM(t, false, "result", w.cons1.KeyFile, "-o", out)
	zr, err := zip.OpenReader(filepath.Join(out, "results.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	got := map[string]bool{}
	for _, f := range zr.File {
		if err := zipdir.CleanPath(f.Name); err != nil {
			t.Errorf("results.zip holds an unclean name: %v", err)
		}
		got[f.Name] = true
	}
	for _, want := range []string{"ok.txt", "..%5C..%5C..%5Cevil.txt", "%2Drf", "line%0Abreak", "C%3Aevil", "%E2%80%AEtxt.exe"} {
		if !got[want] {
			t.Errorf("results.zip lacks %q: %v", want, got)
		}
	}
	ev := events.find(agent.EventResultsRenamed + " " + agent.StatusWarning)
	if ev == "" || !strings.Contains(ev, `"renamed":"5"`) || !strings.Contains(ev, `%2Drf`) {
		t.Errorf("no Warning event listing the 5 renames: %q", ev)
	}
}
