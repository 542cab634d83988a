package agent

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	attchild "github.com/cvmd/cvmd/children/attestation"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
)

// TestAttestationAndIMA drives `cvm attestation get` through the agent to
// the real attestation service (TPM simulator), and `cvm ima-measurements`
// against an IMA list and PCR10 laid out as the kernel does.
func TestAttestationAndIMA(t *testing.T) {
	svc, err := attchild.New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	al, ad := agenttest.Edge(t, "attestation")
	gs := grpc.NewServer()
	attestation.RegisterAttestationServer(gs, svc)
	go gs.Serve(al)
	defer gs.Stop()
	conn, err := ipc.GRPCClient(ad)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	dir := t.TempDir()
	ima := filepath.Join(dir, "ascii_runtime_measurements")
	pcrFile := filepath.Join(dir, "pcr10")
	var list strings.Builder
	pcr := make([]byte, 20)
	for i, name := range []string{"boot_aggregate", "/init", "/usr/bin/cvmd"} {
		d := sha1.Sum([]byte(name))
		if i == 0 {
			d = [20]byte{} // an all-zero template hash extends as all 0xff
		}
		fmt.Fprintf(&list, "10 %x ima-ng sha256:%064x %s\n", d, i, name)
		if i == 0 {
			for j := range d {
				d[j] = 0xff
			}
		}
		h := sha1.New()
		h.Write(pcr)
		h.Write(d[:])
		pcr = h.Sum(nil)
	}
	os.WriteFile(ima, []byte(list.String()), 0o644)
	os.WriteFile(pcrFile, []byte(hex.EncodeToString(pcr)+"\n"), 0o644)

	w := &world{dir: t.TempDir()}
	w.h = agenttest.Start(t, agenttest.Options{Attestation: attestation.NewAttestationClient(conn),
		Settings: &config.AgentSettings{ImaMeasurementsPath: ima, Pcr10Path: pcrFile}})
	w.useHarness()

	out := filepath.Join(w.dir, "att.bin")
	w.mustCVM(t, false, "attestation", "get", "vtpm", "--vtpm", strings.Repeat("ab", 32), "-o", out)
	if b, err := os.ReadFile(out); err != nil || len(b) < 100 {
		t.Fatalf("token: %d bytes, %v", len(b), err)
	}
	if code, _, errs := w.cvm(t, false, "attestation", "get", "vtpm", "--vtpm", strings.Repeat("ab", 33)); code != 2 || !strings.Contains(errs, "--vtpm has 33 bytes, at most 32") {
		t.Fatalf("long nonce: exit %d %q, want usage error 2", code, errs)
	}

	imaOut := filepath.Join(w.dir, "ima.txt")
	got := w.mustCVM(t, false, "ima-measurements", imaOut)
	if !strings.Contains(got, "matches PCR10") {
		t.Fatalf("ima: %s", got)
	}
	if b, _ := os.ReadFile(imaOut); string(b) != list.String() {
		t.Fatal("downloaded IMA list differs")
	}
	os.WriteFile(pcrFile, []byte(strings.Repeat("00", 20)), 0o644)
	w.wantCVMError(t, false, "IMA list does not match PCR10", "ima-measurements", imaOut)
	os.Remove(ima)
	w.wantCVMError(t, false, "does not exist (the kernel has no IMA", "ima-measurements", imaOut)
}
