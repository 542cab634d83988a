package agent

import (
	"archive/zip"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/proto/config"
)

// TestDecompressAndLimits: a directory dataset travels as the deterministic
// zip and is unpacked with --decompress; a zip-slip archive and an
// over-limit dataset are refused by message and leave nothing behind.
func TestDecompressAndLimits(t *testing.T) {
	w := &world{dir: t.TempDir()}
	w.setup(t, "#!/bin/sh\nfind datasets -type f | sort > results/files.txt\n")
	w.h = agenttest.Start(t, agenttest.Options{Settings: &config.AgentSettings{MaxDatasetBytes: 1 << 20}})
	w.useHarness()

	imgs := filepath.Join(w.dir, "images")
	os.MkdirAll(filepath.Join(imgs, "sub"), 0o755)
	os.WriteFile(filepath.Join(imgs, "one.png"), []byte("1"), 0o644)
	os.WriteFile(filepath.Join(imgs, "sub", "two.png"), []byte("2"), 0o644)

	evil := filepath.Join(w.dir, "evil.zip")
	f, _ := os.Create(evil)
	zw := zip.NewWriter(f)
	e, _ := zw.Create("../../escaped.txt")
	e.Write([]byte("x"))
	zw.Close()
	f.Close()

	big := filepath.Join(w.dir, "big.bin")
	os.WriteFile(big, make([]byte, 2<<20), 0o644)

	m := agenttest.NewManifest("comp-zip", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
		{Filename: "images", Hash: agenttest.HashFile(t, imgs), Owner: w.dataA},
		{Filename: "evil.zip", Hash: agenttest.HashFile(t, evil), Owner: w.dataA},
		{Filename: "big.bin", Hash: agenttest.HashFile(t, big), Owner: w.dataB},
	}, w.cons1)
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.wantCVMError(t, false, "unsafe zip entry", "data", evil, w.dataA.KeyFile, "--decompress")
	w.wantCVMError(t, false, "upload exceeds the agent's size limit", "data", big, w.dataB.KeyFile)
	w.incomingEmpty(t)
	if _, err := os.Stat(filepath.Join(w.compDir, "escaped.txt")); err == nil {
		t.Fatal("zip-slip entry escaped")
	}
	w.mustCVM(t, false, "data", imgs, w.dataA.KeyFile, "-d")
	ents, _ := os.ReadDir(filepath.Join(w.compDir, "datasets"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "one.png,sub" {
		t.Fatalf("datasets dir holds %v", names)
	}
	if s := w.state(t); s != "ReceivingData" {
		t.Fatalf("state %s", s)
	}
}

// TestFreeDiskIsChecked: an agent that must keep more free space than the
// disk has refuses uploads with a clear error and keeps its state.
func TestFreeDiskIsChecked(t *testing.T) {
	w := &world{dir: t.TempDir()}
	w.setup(t, algoScript)
	w.h = agenttest.Start(t, agenttest.Options{Settings: &config.AgentSettings{MinFreeBytes: 1 << 62}})
	w.useHarness()
	w.start(t)
	w.wantCVMError(t, false, "not enough free disk space in the agent", "algo", w.algo, w.algoP.KeyFile)
	w.incomingEmpty(t)
	if s := w.state(t); s != "ReceivingAlgorithm" {
		t.Fatalf("state %s", s)
	}
}
