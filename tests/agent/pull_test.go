package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/ipc"
	attpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/pull/cipherfile"
	"github.com/cvmd/cvmd/pull/kbs/kbstest"
	"github.com/cvmd/cvmd/pull/pulltest"
)

// simAttestation is the attestation child's service over a simulated
// SNP+vTPM platform (go-tpm-tools simulator, go-sev-guest test signer).
type simAttestation struct {
	attpb.UnimplementedAttestationServer
	a *attest.Attester
}

func (s *simAttestation) Evidence(_ context.Context, r *attpb.EvidenceRequest) (*attpb.EvidenceResponse, error) {
	tok, err := s.a.Attest(attest.Request{ReportData: r.GetReportData(), Nonce: r.GetNonce(), Platform: attest.Platform(r.GetPlatformType())})
	if err != nil {
		return nil, err
	}
	return &attpb.EvidenceResponse{EatToken: tok, Platform: s.a.Describe(attest.Platform(r.GetPlatformType()))}, nil
}

func attestationEdge(t *testing.T) attpb.AttestationClient {
	s, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := attest.NewTPM(rw)
	if err != nil {
		t.Fatal(err)
	}
	l, d := agenttest.Edge(t, "attestation")
	gs := grpc.NewServer()
	attpb.RegisterAttestationServer(gs, &simAttestation{a: &attest.Attester{TPM: tp, SNP: s, Simulated: true}})
	go gs.Serve(l)
	conn, err := ipc.GRPCClient(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); gs.Stop(); tp.Close(); rw.Close() })
	return attpb.NewAttestationClient(conn)
}

// pullWorld is a world whose agent can fetch: an HTTPS file server and a
// test KBS (both with a test CA), the real egress proxy over the agent's
// edge (the operator's allowlist names the loopback servers), and the
// attestation service on a simulated platform for the KBS's evidence.
type pullWorld struct {
	*world
	ca     *pulltest.CA
	files  *pulltest.FileServer
	kbs    *kbstest.Server
	events *agenttest.Events
	opts   agenttest.Options
}

func newPullWorld(t *testing.T, script string) *pullWorld {
	events := &agenttest.Events{}
	w := &pullWorld{world: &world{dir: t.TempDir(), events: events}, ca: pulltest.NewCA(t), events: events}
	w.setup(t, script)
	w.files = pulltest.NewFileServer(t, w.ca)
	w.kbs = kbstest.Start(t, w.ca.Server)
	w.kbs.Verify = verify.Options{AllowSimulated: true}
	_, edge := pulltest.Egress(t, []string{w.files.Addr, w.kbs.HostPort()}, nil)
	att := attestationEdge(t)
	pc, err := agent.PullConfig(&config.PullSettings{CaPem: w.ca.PEM, Attempts: 30, BackoffMaxMs: 100}, edge, att)
	if err != nil {
		t.Fatal(err)
	}
	w.opts = agenttest.Options{Pull: pc, Events: w.events, Attestation: att, StateDir: t.TempDir()}
	w.h = agenttest.Start(t, w.opts)
	w.useHarness()
	return w
}

func (w *pullWorld) restart(t *testing.T) {
	w.h.Stop()
	w.h = agenttest.Start(t, w.opts)
	w.useHarness()
}

func (w *pullWorld) eventsOf(typ string) []map[string]string {
	var out []map[string]string
	for _, e := range w.events.All() {
		if e.Type == typ {
			m := map[string]string{}
			json.Unmarshal([]byte(e.Details), &m)
			out = append(out, m)
		}
	}
	return out
}

func seal(t *testing.T, plain, out string, key []byte) {
	in, _ := os.Open(plain)
	defer in.Close()
	f, _ := os.Create(out)
	defer f.Close()
	nonce := make([]byte, 12)
	rand.Read(nonce)
	if _, err := cipherfile.SealStream(f, in, key, nonce); err != nil {
		t.Fatal(err)
	}
}

// TestPullMixedComputation: the algorithm comes from an HTTPS server,
// dataset a.csv encrypted from the same server with its key released by
// the KBS after attestation, dataset b.csv is uploaded by the CLI; the run
// sees all three and the events say what came from where.
func TestPullMixedComputation(t *testing.T) {
	w := newPullWorld(t, algoScript)
	key := make([]byte, 32)
	rand.Read(key)
	w.kbs.SetResource("default/key/a", key)
	sealed := filepath.Join(w.dir, "a.csv.enc")
	seal(t, w.dsA, sealed, key)
	w.files.Add("/algo.sh", w.algo)
	w.files.Add("/enc/a.csv", sealed)

	m := agenttest.NewManifest("pull-1", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
		{Filename: "a.csv", Hash: agenttest.HashFile(t, w.dsA), Owner: w.dataA},
		{Filename: "b.csv", Hash: agenttest.HashFile(t, w.dsB), Owner: w.dataB},
	}, w.cons1)
	kbsCfg := &manifest.KBSConfig{URL: w.kbs.URL, Enabled: true}
	m.Algorithm.Source = &manifest.ResourceSource{Type: "https", URL: w.files.URL("/algo.sh")}
	m.Datasets[0].Source = &manifest.ResourceSource{URL: w.files.URL("/enc/a.csv"), Encrypted: true, KBSResourcePath: "default/key/a"}
	m.Datasets[0].KBS = kbsCfg
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.waitState(t, "ReceivingData")
	w.wantCVMError(t, false, "not expecting this operation", "algo", w.algo, w.algoP.KeyFile)
	w.wantCVMError(t, false, "is fetched from its source", "data", w.dsA, w.dataA.KeyFile)
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	w.waitState(t, "ConsumingResults")
	w.mustCVM(t, false, "result", w.cons1.KeyFile)
	out, err := os.ReadFile(filepath.Join(filepath.Dir(w.cons1.KeyFile), "results.zip"))
	if err != nil || len(out) == 0 {
		// The CLI writes results.zip in its working dir.
		out, err = os.ReadFile("results.zip")
		defer os.Remove("results.zip")
	}
	if err != nil || !strings.Contains(string(out), "1,2") || !strings.Contains(string(out), "3,4") {
		t.Fatalf("results do not hold both datasets: %v", err)
	}
	fetched := w.eventsOf(agent.EventFetched)
	if len(fetched) != 2 || !strings.Contains(fetched[0]["source"], "/algo.sh") || fetched[1]["encrypted"] != "true" || fetched[1]["filename"] != "a.csv" {
		t.Fatalf("fetch events %v", fetched)
	}
	if w.kbs.Releases.Load() != 1 {
		t.Fatalf("KBS released %d keys", w.kbs.Releases.Load())
	}
}

// TestPullFailures: each failure fails the computation with an event and a
// result error naming the resource and its source.
func TestPullFailures(t *testing.T) {
	cases := []struct {
		name, class, text string
		setup             func(w *pullWorld, m *manifest.Computation)
	}{
		{"hash mismatch", "hash_mismatch", "hash mismatch", func(w *pullWorld, m *manifest.Computation) {
			w.files.Add("/algo.sh", w.dsA) // other bytes than declared
		}},
		{"not found", "not_found", "404", func(w *pullWorld, m *manifest.Computation) {}},
		{"KBS refuses", "kbs_refused", "key broker refused", func(w *pullWorld, m *manifest.Computation) {
			w.files.Add("/algo.sh", w.algo)
			w.kbs.RefuseResources.Store(true)
			m.Algorithm.Source.Encrypted, m.Algorithm.Source.KBSResourcePath = true, "default/key/algo"
			m.Algorithm.KBS = &manifest.KBSConfig{URL: w.kbs.URL, Enabled: true}
		}},
		{"wrong key", "decrypt_failed", "decryption failed", func(w *pullWorld, m *manifest.Computation) {
			sealed := filepath.Join(w.dir, "algo.enc")
			seal(t, w.algo, sealed, make([]byte, 32))
			w.files.Add("/algo.sh", sealed)
			w.kbs.SetResource("default/key/algo", append(make([]byte, 31), 1))
			m.Algorithm.Source.Encrypted, m.Algorithm.Source.KBSResourcePath = true, "default/key/algo"
			m.Algorithm.KBS = &manifest.KBSConfig{URL: w.kbs.URL, Enabled: true}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newPullWorld(t, algoScript)
			m := agenttest.NewManifest("pull-f", w.algoP, agenttest.HashFile(t, w.algo), "bin", nil, w.cons1)
			m.Algorithm.Source = &manifest.ResourceSource{URL: w.files.URL("/algo.sh")}
			c.setup(w, m)
			if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
				t.Fatalf("start: %v %v", err, res)
			}
			w.waitState(t, "Failed")
			failed := w.eventsOf(agent.EventFetchFailed)
			if len(failed) != 1 || failed[0]["class"] != c.class || failed[0]["resource"] != "algorithm" || !strings.Contains(failed[0]["error"], c.text) {
				t.Fatalf("failure events %v", failed)
			}
			w.wantCVMError(t, false, "algorithm from "+w.files.URL("/algo.sh"), "result", w.cons1.KeyFile)
			ents, _ := os.ReadDir(filepath.Join(w.compDir, ".pull"))
			if len(ents) != 0 {
				t.Fatalf("left in staging: %v", ents)
			}
		})
	}
}

// TestPullResumesAfterAgentRestart: the agent dies in the middle of a
// download while the server is down; the next agent resumes it with a
// range request and the computation completes.
func TestPullResumesAfterAgentRestart(t *testing.T) {
	w := newPullWorld(t, "#!/bin/sh\nwc -c datasets/big.dat > results/size.txt\n")
	big := filepath.Join(w.dir, "big.dat")
	f, _ := os.Create(big)
	io.CopyN(f, rand.Reader, 24<<20)
	f.Close()
	w.files.Add("/big.dat", big)
	m := agenttest.NewManifest("pull-r", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{{Hash: agenttest.HashFile(t, big), Owner: w.dataA}}, w.cons1)
	m.Datasets[0].Source = &manifest.ResourceSource{URL: w.files.URL("/big.dat")} // no filename: named from the source
	died := w.files.DieAfter(8 << 20)
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	select {
	case <-died:
	case <-time.After(stateBound):
		t.Fatalf("waited %v for the file server to die after 8 MiB of big.dat; %s", stateBound, w.describe())
	}
	w.restart(t) // the agent is killed while the server is down
	w.files.Start()
	w.waitState(t, "ConsumingResults")
	fetched := w.eventsOf(agent.EventFetched)
	if len(fetched) != 1 || fetched[0]["filename"] != "big.dat" || fetched[0]["resumed_at"] == "0" {
		t.Fatalf("fetch events %v (the restarted fetch did not resume)", fetched)
	}
	if w.files.Ranges.Load() == 0 {
		t.Fatal("no range request")
	}
}

// TestDatasetsWithoutFilename: Cocos's test manager declares datasets with
// only a hash and a key; uploads are matched by their hash among them and
// installed under the uploaded name; an upload matching none is refused by
// name and hash, and nothing is kept.
func TestDatasetsWithoutFilename(t *testing.T) {
	w := &world{dir: t.TempDir()}
	w.setup(t, algoScript)
	w.h = agenttest.Start(t, agenttest.Options{})
	w.useHarness()
	m := agenttest.NewManifest("unnamed", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
		{Hash: agenttest.HashFile(t, w.dsB), Owner: w.dataB},
		{Hash: agenttest.HashFile(t, w.dsA), Owner: w.dataA},
	}, w.cons1)
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	stray := filepath.Join(w.dir, "c.csv")
	os.WriteFile(stray, []byte("not declared\n"), 0o644)
	w.wantCVMError(t, false, `"c.csv": no dataset is named so, and its SHA3-256`, "data", stray, w.dataA.KeyFile)
	w.incomingEmpty(t)
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	// dataB's only dataset is in: another upload of theirs matches nothing they own.
	w.wantCVMError(t, false, "no dataset has that name, and the datasets declared without one belong to other data providers", "data", w.dsB, w.dataB.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	w.waitState(t, "ConsumingResults")
	for _, n := range []string{"a.csv", "b.csv"} {
		if _, err := os.Stat(filepath.Join(w.compDir, "datasets", n)); err != nil && w.state(t) == "Running" {
			t.Fatalf("dataset %s not installed under its uploaded name: %v", n, err)
		}
	}
}

// TestEncryptedUpload: as Cocos, an uploaded dataset whose manifest entry
// is encrypted (no URL, an enabled KBS) is decrypted with the KBS's key and
// its plaintext checked against the manifest; one sealed with another key
// is refused and nothing is kept.
func TestEncryptedUpload(t *testing.T) {
	w := newPullWorld(t, algoScript)
	key := make([]byte, 32)
	rand.Read(key)
	w.kbs.SetResource("default/key/b", key)
	sealed := filepath.Join(w.dir, "enc", "b.csv")
	os.MkdirAll(filepath.Dir(sealed), 0o755)
	seal(t, w.dsB, sealed, key)
	wrong := filepath.Join(w.dir, "wrong", "b.csv")
	os.MkdirAll(filepath.Dir(wrong), 0o755)
	seal(t, w.dsB, wrong, make([]byte, 32))
	m := agenttest.NewManifest("enc-up", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
		{Filename: "a.csv", Hash: agenttest.HashFile(t, w.dsA), Owner: w.dataA},
		{Filename: "b.csv", Hash: agenttest.HashFile(t, w.dsB), Owner: w.dataB},
	}, w.cons1)
	m.Datasets[1].Source = &manifest.ResourceSource{Encrypted: true, KBSResourcePath: "default/key/b"}
	m.Datasets[1].KBS = &manifest.KBSConfig{URL: w.kbs.URL, Enabled: true}
	if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("start: %v %v", err, res)
	}
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	w.wantCVMError(t, false, "decryption failed", "data", wrong, w.dataB.KeyFile)
	w.incomingEmpty(t)
	w.mustCVM(t, false, "data", sealed, w.dataB.KeyFile)
	w.waitState(t, "ConsumingResults")
}
