// Package agenttest runs a real agent for tests: in-process, with a small
// but real runner (proto/runner over an ipc edge, executing the algorithm
// as a process in the computation dir) standing in for the runner child,
// and helpers for parties, keys and manifests.
//
// Test code only: imported by children/agent's tests and tests/agent.
package agenttest

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/children/agent"
	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/runner"
	"github.com/cvmd/cvmd/pull"
)

// Runner executes bin algorithms (and python ones with python3) in Dir.
type Runner struct {
	runner.UnimplementedRunnerServer
	Dir string

	mu    sync.Mutex
	procs map[string]*exec.Cmd // guarded by mu
	reqs  []*runner.RunRequest // guarded by mu
}

// Requests returns the RunRequests received so far.
func (r *Runner) Requests() []*runner.RunRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*runner.RunRequest(nil), r.reqs...)
}

// Run runs the algorithm to completion.
func (r *Runner) Run(ctx context.Context, req *runner.RunRequest) (*runner.RunResponse, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	var argv []string
	switch req.GetAlgoType() {
	case "bin", "":
		argv = append([]string{filepath.Join(r.Dir, req.GetAlgorithmPath())}, req.GetArgs()...)
	case "python":
		argv = append([]string{"python3", filepath.Join(r.Dir, req.GetAlgorithmPath())}, req.GetArgs()...)
	default:
		return nil, fmt.Errorf("test runner: algo_type %q not supported", req.GetAlgoType())
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = r.Dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return &runner.RunResponse{ComputationId: req.GetComputationId(), Error: "starting algorithm: " + err.Error()}, nil
	}
	r.mu.Lock()
	if r.procs == nil {
		r.procs = map[string]*exec.Cmd{}
	}
	r.procs[req.GetComputationId()] = cmd
	r.mu.Unlock()
	err := cmd.Wait()
	r.mu.Lock()
	delete(r.procs, req.GetComputationId())
	r.mu.Unlock()
	res := &runner.RunResponse{ComputationId: req.GetComputationId(), ExitCode: int32(cmd.ProcessState.ExitCode())}
	if err != nil {
		res.Error = fmt.Sprintf("algorithm execution error: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return res, nil
}

// Running is how many algorithm processes run now.
func (r *Runner) Running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.procs)
}

// Stop kills the computation's process, if any.
func (r *Runner) Stop(_ context.Context, req *runner.StopRequest) (*runner.StopResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.procs[req.GetComputationId()]; c != nil && c.Process != nil {
		c.Process.Kill()
	}
	return &runner.StopResponse{}, nil
}

// Edge returns a served Listener and a Dialer connected to it over a
// SEQPACKET socketpair, as the supervisor wires children.
func Edge(t testing.TB, name string) (*ipc.Listener, *ipc.Dialer) {
	t.Helper()
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, name)
	if err != nil {
		t.Fatal(err)
	}
	l := ipc.NewListener(name)
	l.Add(srv)
	return l, ipc.NewDialer(name, cli)
}

// Options configure Start.
type Options struct {
	StateDir string // "" = a new temp dir
	Settings *config.AgentSettings
	TCP      bool // also serve the public API on 127.0.0.1
	// Attestation, if set, is the agent's attestation service.
	Attestation attestation.AttestationClient
	// Pull, if set, enables pull mode (agent.Config.Pull).
	Pull *pull.Config
	// Events, if set, receives the agent's events.
	Events logsink.Publisher
}

// Events records published events (a logsink.Publisher).
type Events struct {
	mu  sync.Mutex
	all []Event // guarded by mu
}

// Event is one published event.
type Event struct {
	Type, Status string
	Details      string // JSON, or ""
}

// Event implements logsink.Publisher.
func (e *Events) Event(typ, status string, details ...any) bool {
	ev := Event{Type: typ, Status: status}
	if len(details) == 1 {
		if raw, ok := details[0].(json.RawMessage); ok {
			ev.Details = string(raw)
		}
	}
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
	return true
}

// All returns the events so far.
func (e *Events) All() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.all...)
}

// Harness is a running agent.
type Harness struct {
	Agent    *agent.Agent
	StateDir string
	CompDir  string
	// Dial makes a connection to the public API over an ipc edge.
	Dial    func(ctx context.Context) (net.Conn, error)
	TCPAddr string // "" unless Options.TCP
	Control agentctl.ControlClient
	Runner  *Runner

	stop func()
}

// Start starts an agent with a test runner; t.Cleanup stops it.
func Start(t testing.TB, o Options) *Harness {
	t.Helper()
	if o.StateDir == "" {
		o.StateDir = t.TempDir()
	}
	comp := filepath.Join(o.StateDir, "computation")
	if o.Settings.GetComputationDir() != "" {
		comp = o.Settings.GetComputationDir()
	}
	rl, rd := Edge(t, "runner")
	rs := grpc.NewServer()
	rn := &Runner{Dir: comp}
	runner.RegisterRunnerServer(rs, rn)
	go rs.Serve(rl)
	rconn, err := ipc.GRPCClient(rd)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{StateDir: o.StateDir, Settings: o.Settings, Runner: runner.NewRunnerClient(rconn), Attestation: o.Attestation, Pull: o.Pull, Events: o.Events})
	if err != nil {
		t.Fatal(err)
	}
	pl, pd := Edge(t, "agent")
	cl, cd := Edge(t, "agent-control")
	h := &Harness{Agent: a, StateDir: o.StateDir, CompDir: comp, Dial: pd.Dial, Runner: rn}
	var lns []net.Listener
	if o.TCP {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h.TCPAddr = tl.Addr().String()
		lns = append(lns, tl)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.Run(ctx, pl, cl) }()
	for _, l := range lns {
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx, l, nil) }()
	}
	cconn, err := ipc.GRPCClient(cd, BoundedCalls(CallBound))
	if err != nil {
		t.Fatal(err)
	}
	h.Control = agentctl.NewControlClient(cconn)
	stopNow := func() {
		cancel()
		wg.Wait()
		cctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		a.Close(cctx)
		c()
		cconn.Close()
		pd.Close()
		cd.Close()
		rconn.Close()
		rs.Stop()
		rd.Close()
	}
	var once sync.Once
	h.stop = func() {
		once.Do(func() { WithinBound(t, StopBound, "stopping the agent (its requests, runs and fetches)", stopNow) })
	}
	t.Cleanup(h.stop)
	return h
}

// Stop stops the agent (as a kill would, between requests): its state dir
// stays for a new Start.
func (h *Harness) Stop() { h.stop() }

// Party is a key holder: an algorithm provider, data provider or consumer.
type Party struct {
	Key     crypto.Signer
	PubDER  []byte
	KeyFile string // private key PEM on disk, for the CLI
}

// NewParty makes a party with a key of kind (rsa, ecdsa, ed25519), writing
// its private key to a file in dir.
func NewParty(t testing.TB, kind, dir string) *Party {
	t.Helper()
	privPEM, pubPEM, err := rolesig.NewKey(kind)
	if err != nil {
		t.Fatal(err)
	}
	key, err := rolesig.ParsePrivateKeyPEM(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, der, err := rolesig.ParsePublicKeyPEM(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, kind+"-*.pem")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(privPEM)
	f.Close()
	return &Party{Key: key, PubDER: der, KeyFile: f.Name()}
}

// Sig returns the base64 signature metadata value for role.
func (p *Party) Sig(t testing.TB, role string) string {
	s, err := rolesig.SignBase64(p.Key, role)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// HashFile returns the manifest hash of a file or directory.
func HashFile(t testing.TB, path string) [32]byte {
	t.Helper()
	s, err := digest.Path(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Manifest builds a manifest; datasets maps filename → (hash, owner).
type DatasetSpec struct {
	Filename string
	Hash     [32]byte
	Owner    *Party
}

// NewManifest returns a manifest for an algorithm with hash algoHash.
func NewManifest(id string, algo *Party, algoHash [32]byte, algoType string, ds []DatasetSpec, consumers ...*Party) *manifest.Computation {
	c := &manifest.Computation{ID: id, Name: "test " + id}
	c.Algorithm = manifest.Algorithm{Hash: algoHash, UserKey: algo.PubDER, AlgoType: algoType}
	for _, d := range ds {
		c.Datasets = append(c.Datasets, manifest.Dataset{Hash: d.Hash, UserKey: d.Owner.PubDER, Filename: d.Filename})
	}
	for _, p := range consumers {
		c.ResultConsumers = append(c.ResultConsumers, manifest.ResultConsumer{UserKey: p.PubDER})
	}
	return c
}
