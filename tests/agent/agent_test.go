package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"net"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/cocos/zipdir"
	"github.com/cvmd/cvmd/cvm/cli"
	"github.com/cvmd/cvmd/internal/testutil"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/agentctl"
)

// algoScript reads both datasets and writes results, one of them > 1 MiB so
// downloads take several chunks.
const algoScript = `#!/bin/sh
set -e
mkdir -p results/sub
cat datasets/a.csv datasets/b.csv > results/joined.csv
head -c 2621440 /dev/zero > results/sub/big.bin
echo "args: $*" > results/args.txt
`

type world struct {
	dir                 string
	algoP, dataA, dataB *agenttest.Party
	cons1, cons2, other *agenttest.Party
	algo, dsA, dsB      string
	h                   *agenttest.Harness // nil when the agent is a process

	dial    func(ctx context.Context) (net.Conn, error)
	control agentctl.ControlClient
	tcpAddr string
	compDir string
	events  *agenttest.Events // the agent's events, when recorded
}

func newWorld(t *testing.T, opts agenttest.Options, script string) *world {
	w := &world{dir: t.TempDir()}
	w.setup(t, script)
	w.h = agenttest.Start(t, opts)
	w.useHarness()
	w.start(t)
	return w
}

func (w *world) useHarness() {
	w.dial, w.control, w.tcpAddr, w.compDir = w.h.Dial, w.h.Control, w.h.TCPAddr, w.h.CompDir
}

// setup makes the parties, the algorithm and two datasets.
func (w *world) setup(t *testing.T, script string) {
	w.algoP = agenttest.NewParty(t, "rsa", w.dir)
	w.dataA = agenttest.NewParty(t, "ecdsa", w.dir)
	w.dataB = agenttest.NewParty(t, "ed25519", w.dir)
	w.cons1 = agenttest.NewParty(t, "ed25519", w.dir)
	w.cons2 = agenttest.NewParty(t, "ecdsa", w.dir)
	w.other = agenttest.NewParty(t, "ed25519", w.dir)
	w.algo = filepath.Join(w.dir, "algo.sh")
	os.WriteFile(w.algo, []byte(script), 0o755)
	os.Mkdir(filepath.Join(w.dir, "in"), 0o755)
	w.dsA = filepath.Join(w.dir, "in", "a.csv")
	w.dsB = filepath.Join(w.dir, "in", "b.csv")
	os.WriteFile(w.dsA, []byte("x,y\n1,2\n"), 0o644)
	os.WriteFile(w.dsB, []byte("x,y\n3,4\n"), 0o644)
}

// start sends the manifest.
func (w *world) start(t *testing.T) {
	m := agenttest.NewManifest("comp-1", w.algoP, agenttest.HashFile(t, w.algo), "bin", []agenttest.DatasetSpec{
		{Filename: "a.csv", Hash: agenttest.HashFile(t, w.dsA), Owner: w.dataA},
		{Filename: "b.csv", Hash: agenttest.HashFile(t, w.dsB), Owner: w.dataB},
	}, w.cons1, w.cons2)
	res, err := w.control.Start(context.Background(), m.RunReq(nil))
	if err != nil || res.GetError() != "" {
		t.Fatalf("control start: %v %q", err, res.GetError())
	}
}

// cvm runs the CLI in-process against the harness, over the socketpair or TCP.
func (w *world) cvm(t *testing.T, tcp bool, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	o := cli.Options{Stdout: &out, Stderr: &errb}
	env := map[string]string{}
	if tcp {
		env["AGENT_GRPC_URL"] = w.tcpAddr
	} else {
		o.Dial = w.dial
	}
	o.Getenv = func(k string) string { return env[k] }
	ctx, cancel := context.WithTimeout(context.Background(), agenttest.CallBound)
	defer cancel()
	code := cli.Run(ctx, args, o)
	return code, out.String(), errb.String()
}

func (w *world) mustCVM(t *testing.T, tcp bool, args ...string) string {
	t.Helper()
	code, out, errs := w.cvm(t, tcp, args...)
	if code != 0 {
		t.Fatalf("cvm %v: exit %d: %s", args, code, errs)
	}
	return out
}

func (w *world) wantCVMError(t *testing.T, tcp bool, want string, args ...string) {
	t.Helper()
	code, _, errs := w.cvm(t, tcp, args...)
	if code != 1 || !strings.Contains(errs, want) || strings.Count(errs, "\n") != 1 {
		t.Fatalf("cvm %v: exit %d stderr %q, want exit 1 and one line containing %q", args, code, errs, want)
	}
}

func (w *world) state(t *testing.T) string {
	t.Helper()
	res, err := w.control.State(context.Background(), &agentctl.StateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return res.GetState()
}

// stateBound is how long waitState waits: far above a step's time on a
// loaded machine (the computations here move a few KiB).
const stateBound = 2 * time.Minute

// waitState polls the agent's state until it is want; it fails naming the
// state it waited for, the one it saw last, and (a pull world's) events.
func (w *world) waitState(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(stateBound)
	s := ""
	for time.Now().Before(deadline) {
		if s = w.state(t); s == want {
			return
		} else if s == "Failed" && want != "Failed" {
			t.Fatalf("computation failed while waiting for state %s; %s", want, w.describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("waited %v for state %s: still %s; %s", stateBound, want, s, w.describe())
}

// describe says what the agent published, for a failure message.
func (w *world) describe() string {
	if w.events == nil {
		return "no event recorder"
	}
	var b strings.Builder
	b.WriteString("events:")
	for _, e := range w.events.All() {
		fmt.Fprintf(&b, "\n  %s %s %s", e.Type, e.Status, e.Details)
	}
	return b.String()
}

func (w *world) incomingEmpty(t *testing.T) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(w.compDir, ".incoming"))
	if len(ents) != 0 {
		t.Fatalf("partial uploads left behind: %v", ents)
	}
}

func TestFullComputation(t *testing.T) {
	for _, tc := range []struct {
		name string
		tcp  bool
	}{{"socketpair", false}, {"tcp", true}} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			w := newWorld(t, agenttest.Options{TCP: tc.tcp}, algoScript)
			tcp := tc.tcp
			if s := w.state(t); s != "ReceivingAlgorithm" {
				t.Fatalf("state %s after the manifest", s)
			}
			// Refusals before the algorithm, each by its message; none changes the state.
			w.wantCVMError(t, tcp, "agent not expecting this operation in the current state", "data", w.dsA, w.dataA.KeyFile)
			w.wantCVMError(t, tcp, "request is not authenticated", "algo", w.algo, w.other.KeyFile)
			w.wantCVMError(t, tcp, "computation results are not yet ready", "result", w.cons1.KeyFile)
			w.wantCVMError(t, tcp, "malformed data, hash does not match manifest", "algo", w.dsA, w.algoP.KeyFile)
			w.incomingEmpty(t)
			if s := w.state(t); s != "ReceivingAlgorithm" {
				t.Fatalf("state %s after refusals", s)
			}
			w.mustCVM(t, tcp, "algo", w.algo, w.algoP.KeyFile, "--args", "one", "--args", "two words")
			w.wantCVMError(t, tcp, "agent not expecting this operation in the current state", "algo", w.algo, w.algoP.KeyFile)
			// Datasets: wrong name, wrong hash, wrong owner, then b before a.
			other := filepath.Join(w.dir, "c.csv")
			os.WriteFile(other, []byte("z"), 0o644)
			w.wantCVMError(t, tcp, "dataset not declared in computation manifest", "data", other, w.dataA.KeyFile)
			bad := filepath.Join(w.dir, "a.csv")
			os.WriteFile(bad, []byte("tampered"), 0o644)
			w.wantCVMError(t, tcp, "malformed data, hash does not match manifest", "data", bad, w.dataA.KeyFile)
			w.wantCVMError(t, tcp, "belongs to another data provider", "data", w.dsA, w.dataB.KeyFile)
			w.wantCVMError(t, tcp, "request is not authenticated", "data", w.dsA, w.cons1.KeyFile)
			w.incomingEmpty(t)
			w.mustCVM(t, tcp, "data", w.dsB, w.dataB.KeyFile)
			w.wantCVMError(t, tcp, "dataset \"b.csv\" was already received", "data", w.dsB, w.dataB.KeyFile)
			if s := w.state(t); s != "ReceivingData" {
				t.Fatalf("state %s after one of two datasets", s)
			}
			w.mustCVM(t, tcp, "data", w.dsA, w.dataA.KeyFile)
			w.waitState(t, "ConsumingResults")
			w.wantCVMError(t, tcp, "result consumer is undeclared in computation manifest", "result", w.other.KeyFile)
			out := filepath.Join(w.dir, "out")
			w.mustCVM(t, tcp, "result", w.cons1.KeyFile, "-o", out)
			if s := w.state(t); s != "Complete" {
				t.Fatalf("state %s after the first download", s)
			}
			w.mustCVM(t, tcp, "--json", "result", w.cons2.KeyFile, "-o", out, "-f", "second.zip")
			one, _ := os.ReadFile(filepath.Join(out, "results.zip"))
			two, _ := os.ReadFile(filepath.Join(out, "second.zip"))
			// The results are the deterministic zip of what the algorithm wrote.
			want := filepath.Join(w.dir, "want")
			os.MkdirAll(filepath.Join(want, "sub"), 0o755)
			os.WriteFile(filepath.Join(want, "joined.csv"), []byte("x,y\n1,2\nx,y\n3,4\n"), 0o644)
			os.WriteFile(filepath.Join(want, "sub", "big.bin"), make([]byte, 2621440), 0o644)
			os.WriteFile(filepath.Join(want, "args.txt"), []byte("args: one two words\n"), 0o644)
			var wantZip bytes.Buffer
			if _, err := zipdir.WriteDir(&wantZip, want); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(one, wantZip.Bytes()) || !bytes.Equal(two, one) {
				t.Fatalf("results zip (%d, %d bytes) differs from the checksum rule's zip (%d bytes)", len(one), len(two), wantZip.Len())
			}
			// The inputs are gone after the run, as in Cocos.
			if _, err := os.Stat(filepath.Join(w.compDir, "algo")); !os.IsNotExist(err) {
				t.Fatalf("algorithm still on disk after the run: %v", err)
			}
			// Stop resets to waiting for a manifest.
			res, err := w.control.Stop(context.Background(), &agentctl.StopRequest{ComputationId: "comp-1"})
			if err != nil || res.GetError() != "" || w.state(t) != "ReceivingManifest" {
				t.Fatalf("stop: %v %q state %s", err, res.GetError(), w.state(t))
			}
		})
	}
}

func TestFailedRunReportsItsError(t *testing.T) {
	w := newWorld(t, agenttest.Options{}, "#!/bin/sh\necho broken >&2\nexit 3\n")
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	w.waitState(t, "Failed")
	w.wantCVMError(t, false, "computation failed: algorithm execution error: exit status 3: broken", "result", w.cons1.KeyFile)
}

// rawConn is a plain gRPC client built only from our protos.
func rawConn(t *testing.T, w *world) *grpc.ClientConn {
	conn, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return w.dial(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestClientKilledMidUploadThenRetry(t *testing.T) {
	testutil.CheckLeaks(t)
	w := newWorld(t, agenttest.Options{}, algoScript)
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	c := agentpb.NewAgentServiceClient(rawConn(t, w))
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(),
		"user-id", rolesig.DataProvider, "signature", w.dataA.Sig(t, rolesig.DataProvider)))
	stream, err := c.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		if err := stream.Send(&agentpb.DataRequest{Dataset: make([]byte, 1<<20), Filename: "a.csv"}); err != nil {
			t.Fatal(err)
		}
	}
	// The agent has the file open; the client dies.
	testutil.WaitUntil(t, 20*time.Second, "the upload's file in .incoming", func() bool {
		ents, _ := os.ReadDir(filepath.Join(w.compDir, ".incoming"))
		return len(ents) > 0
	})
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(w.compDir, ".incoming"))
		if len(ents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partial upload left behind: %v", ents)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := w.state(t); s != "ReceivingData" {
		t.Fatalf("state %s after an aborted upload", s)
	}
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	w.waitState(t, "ConsumingResults")
}

func TestAgentRestartResumes(t *testing.T) {
	testutil.CheckLeaks(t)
	state := t.TempDir()
	w := newWorld(t, agenttest.Options{StateDir: state}, "#!/bin/sh\nsleep 1\necho ok > results/r.txt\n")
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	// Killed between uploads: the new agent is still waiting for b.csv.
	w.h.Stop()
	w.h = agenttest.Start(t, agenttest.Options{StateDir: state})
	w.useHarness()
	if s := w.state(t); s != "ReceivingData" {
		t.Fatalf("resumed in %s", s)
	}
	w.wantCVMError(t, false, "already received", "data", w.dsA, w.dataA.KeyFile)
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	// Killed while running: the new agent runs the algorithm again.
	testutil.WaitUntil(t, 20*time.Second, "the algorithm running", func() bool { return w.h.Runner.Running() > 0 })
	if s := w.state(t); s != "Running" {
		t.Fatalf("state %s, want Running", s)
	}
	w.h.Stop()
	w.h = agenttest.Start(t, agenttest.Options{StateDir: state})
	w.useHarness()
	w.waitState(t, "ConsumingResults")
	w.mustCVM(t, false, "result", w.cons2.KeyFile, "-o", w.dir)
	z, _ := os.ReadFile(filepath.Join(w.dir, "results.zip"))
	if !bytes.Contains(z, []byte("r.txt")) {
		t.Fatal("results of the resumed run are missing")
	}
}

func TestWire(t *testing.T) {
	w := newWorld(t, agenttest.Options{}, algoScript)
	conn := rawConn(t, w)
	ctx := context.Background()
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	c := agentpb.NewAgentServiceClient(conn)
	sign := func(p *agenttest.Party, role string, kv ...string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, append([]string{"user-id", role, "signature", p.Sig(t, role)}, kv...)...)
	}
	// Algo without algo_type metadata: bin, no crash (Cocos panics here).
	algo, _ := os.ReadFile(w.algo)
	as, _ := c.Algo(sign(w.algoP, rolesig.AlgorithmProvider))
	as.Send(&agentpb.AlgoRequest{Algorithm: algo})
	if _, err := as.CloseAndRecv(); err != nil {
		t.Fatalf("algo without algo_type: %v", err)
	}
	// Filenames that are not a plain name are refused.
	for _, name := range []string{"", "../a.csv", "a/b", "..", "x\x00y"} {
		ds, _ := c.Data(sign(w.dataA, rolesig.DataProvider))
		ds.Send(&agentpb.DataRequest{Dataset: []byte("x"), Filename: name})
		if _, err := ds.CloseAndRecv(); err == nil || !strings.Contains(err.Error(), "malformed data, filename does not match manifest") {
			t.Errorf("filename %q: %v", name, err)
		}
	}
	for _, p := range []struct {
		f    string
		o    *agenttest.Party
		meta []string
	}{{w.dsA, w.dataA, []string{"decompress", "false"}}, {w.dsB, w.dataB, nil}} {
		b, _ := os.ReadFile(p.f)
		ds, _ := c.Data(sign(p.o, rolesig.DataProvider, p.meta...))
		// Cocos's CLI repeats the filename in every chunk.
		ds.Send(&agentpb.DataRequest{Dataset: b[:2], Filename: filepath.Base(p.f)})
		ds.Send(&agentpb.DataRequest{Dataset: b[2:], Filename: filepath.Base(p.f)})
		if _, err := ds.CloseAndRecv(); err != nil {
			t.Fatal(err)
		}
	}
	w.waitState(t, "ConsumingResults")
	rs, err := c.Result(sign(w.cons1, rolesig.Consumer), &agentpb.ResultRequest{})
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := rs.Header()
	if err != nil || len(hdr.Get("file-size")) != 1 {
		t.Fatalf("file-size header: %v %v", hdr, err)
	}
	var total, chunks int
	for {
		m, err := rs.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(m.GetFile()) > 1<<20 {
			t.Fatalf("chunk of %d bytes, more than 1 MiB", len(m.GetFile()))
		}
		total += len(m.GetFile())
		chunks++
	}
	if hdr.Get("file-size")[0] != strconv.Itoa(total) || chunks < 3 {
		t.Fatalf("file-size %s, received %d bytes in %d chunks", hdr.Get("file-size")[0], total, chunks)
	}
	// Attestation without an attestation service, IMA without IMA, Azure.
	as2, _ := c.Attestation(ctx, &agentpb.AttestationRequest{TeeNonce: make([]byte, 65)})
	if _, err := as2.Recv(); err == nil || !strings.Contains(err.Error(), "teeNonce has 65 bytes, at most 64") {
		t.Errorf("long nonce: %v", err)
	}
	as3, _ := c.Attestation(ctx, &agentpb.AttestationRequest{Type: 9})
	if _, err := as3.Recv(); err == nil || !strings.Contains(err.Error(), "invalid attestation type 9") {
		t.Errorf("bad type: %v", err)
	}
	if _, err := c.AzureAttestationToken(ctx, &agentpb.AttestationTokenRequest{TokenNonce: make([]byte, 33)}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "malformed token nonce, expect less or equal to 32 bytes") {
		t.Errorf("azure, long nonce: %v", err)
	}
	if _, err := c.AzureAttestationToken(ctx, &agentpb.AttestationTokenRequest{}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "no attestation service") {
		t.Errorf("azure without an attestation service: %v", err)
	}
}

// TestUnrecordedDatasetIsDroppedOnResume: a dataset file that a killed
// agent had installed but not recorded does not block the retry.
func TestUnrecordedDatasetIsDroppedOnResume(t *testing.T) {
	state := t.TempDir()
	w := newWorld(t, agenttest.Options{StateDir: state}, algoScript)
	w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile)
	w.mustCVM(t, false, "data", w.dsA, w.dataA.KeyFile)
	w.h.Stop()
	// As if the agent died between installing b.csv and saving its state.
	os.WriteFile(filepath.Join(w.compDir, "datasets", "b.csv"), []byte("partial"), 0o644)
	w.h = agenttest.Start(t, agenttest.Options{StateDir: state})
	w.useHarness()
	if _, err := os.Stat(filepath.Join(w.compDir, "datasets", "a.csv")); err != nil {
		t.Fatalf("recorded dataset removed: %v", err)
	}
	w.mustCVM(t, false, "data", w.dsB, w.dataB.KeyFile)
	w.waitState(t, "ConsumingResults")
}
