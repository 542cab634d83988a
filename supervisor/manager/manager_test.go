package manager

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/children/logfwd"
	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// testSupervisor is the supervisor side the link drives: it records calls
// and refuses a second computation as the real one does.
type testSupervisor struct {
	mu       sync.Mutex
	active   string
	starts   []string
	stops    int
	stopGate chan struct{} // if set, Stop waits for it to close
	// stopped, if set, gets a value when Stop is entered (before the gate).
	stopped chan struct{}
}

func (s *testSupervisor) Start(_ context.Context, r *cvms.ComputationRunReq) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active != "" {
		return fmt.Errorf("supervisor: computation %q is active", s.active)
	}
	s.active = r.GetId()
	s.starts = append(s.starts, r.GetId())
	return nil
}

func (s *testSupervisor) Stop(ctx context.Context, _ string) error {
	if s.stopped != nil {
		s.stopped <- struct{}{}
	}
	if s.stopGate != nil {
		select {
		case <-s.stopGate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active = ""
	s.stops++
	return nil
}

func (s *testSupervisor) State(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active != "" {
		return "ReceivingAlgorithm", nil
	}
	return "ReceivingManifest", nil
}

// rig is a real logfwd (queue + Collector over ipc edges), a child's logsink
// and the supervisor's Collector client. restart stops logfwd and starts a
// new one on the same queue directory, handing both clients new edges, as
// the supervisor does when the child restarts.
type rig struct {
	dir     string
	sink    *logsink.Sink
	client  logs.CollectorClient
	restart func()
	// between, if set, runs while logfwd is down during restart.
	between func()
}

func edge(t *testing.T, name string) (client, server *os.File) {
	t.Helper()
	a, b, err := ipc.Socketpair(unix.SOCK_SEQPACKET, name)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	cd := ipc.NewDialer("logfwd", nil)
	sd := ipc.NewDialer("logfwd", nil)
	var stopFwd func()
	startFwd := func() {
		q, rec, err := logfwd.OpenQueue(dir, logfwd.QueueOptions{}, logfwd.DropRecord)
		if err != nil {
			t.Fatal(err)
		}
		if err := logfwd.ReportRecovery(context.Background(), q, rec); err != nil { // as logfwd.Main does
			t.Fatal(err)
		}
		ln := ipc.NewListener("logfwd")
		childEnd, srvA := edge(t, "child")
		supEnd, srvB := edge(t, "supervisor")
		ln.Add(srvA)
		ln.Add(srvB)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { logfwd.Serve(ctx, q, ln, nil); close(done) }()
		cd.Replace(childEnd)
		sd.Replace(supEnd)
		stopFwd = func() { cancel(); <-done; ln.Close(); q.Close() }
	}
	startFwd()
	sink, err := logsink.New(cd, logsink.Options{Originator: "agent", ComputationID: "c1", MaxWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := ipc.GRPCClient(sd)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{dir: dir, sink: sink, client: logs.NewCollectorClient(conn)}
	r.restart = func() {
		stopFwd()
		if r.between != nil {
			r.between()
		}
		startFwd()
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		sink.Close(sctx)
		c()
		conn.Close()
		stopFwd()
		cd.Close()
		sd.Close()
	})
	return r
}

func pubKeyDER(t *testing.T) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sampleReq(t *testing.T, id string) *cvms.ComputationRunReq {
	k := pubKeyDER(t)
	h := make([]byte, 32)
	return &cvms.ComputationRunReq{Id: id, Name: "sample",
		Algorithm:       &cvms.Algorithm{Hash: h, UserKey: k, AlgoType: "bin"},
		Datasets:        []*cvms.Dataset{{Hash: h, UserKey: k, Filename: "iris.csv"}},
		ResultConsumers: []*cvms.ResultConsumer{{UserKey: k}}}
}

// startManager serves a devmanager on addr ("" = any port).
func startManager(t *testing.T, addr string, opts devmanager.Options) (*devmanager.Server, string, func()) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger briefly after a restart
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := devmanager.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { devmanager.Serve(ctx, ln, srv, nil); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return srv, ln.Addr().String(), stop
}

func startLink(t *testing.T, cfg Config, deps Deps) *Link {
	t.Helper()
	cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	if cfg.CommitDelay == 0 {
		cfg.CommitDelay = 300 * time.Millisecond
	}
	if cfg.CVMID == "" {
		cfg.CVMID = "cvm-1"
	}
	l, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// lines extracts "line N" messages received on log streams, in arrival order.
func lines(msgs []devmanager.Received) []int {
	var out []int
	for _, m := range msgs {
		if m.Stream != "log" {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(m.Msg.GetAgentLog().GetMessage(), "line %d", &n); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// checkLines verifies that 0..n-1 all arrived, first occurrences in order,
// and returns the number of duplicates.
func checkLines(t *testing.T, got []int, n int) int {
	t.Helper()
	seen := make([]bool, n)
	next, dups := 0, 0
	for _, v := range got {
		if v < 0 || v >= n {
			t.Fatalf("unexpected line %d", v)
		}
		if seen[v] {
			dups++
			continue
		}
		if v != next {
			t.Fatalf("line %d arrived before line %d", v, next)
		}
		seen[v] = true
		next++
	}
	if next != n {
		t.Fatalf("only lines 0..%d arrived, want %d", next-1, n)
	}
	return dups
}

func waitLines(t *testing.T, srvs []*devmanager.Server, n int, d time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var all []int
		for _, s := range srvs {
			all = append(all, lines(s.Messages())...)
		}
		distinct := map[int]bool{}
		for _, v := range all {
			distinct[v] = true
		}
		if len(distinct) >= n {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d lines arrived in %s", len(distinct), n, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestLinkManagerDownAtBootThenUp(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newRig(t)
	sup := &testSupervisor{}
	addr := freeAddr(t)
	linkLog := &logRecorder{}
	l := startLink(t, Config{URL: addr}, Deps{Supervisor: sup, Logs: r.client, Log: linkLog.logger()})
	const n = 2000
	for i := 0; i < n; i++ {
		if !r.sink.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}}) {
			t.Fatalf("line %d refused", i)
		}
	}
	linkLog.waitCount(t, "manager link down", 2, 10*time.Second) // it tried, and tried again, while the manager was down
	srv, _, _ := startManager(t, addr, devmanager.Options{Computation: sampleReq(t, "c1")})
	got := waitLines(t, []*devmanager.Server{srv}, n, 20*time.Second)
	dups := checkLines(t, got, n)
	t.Logf("delivery: %d lines, %d duplicates", n, dups)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Wait(ctx, func(ms []devmanager.Received) bool {
		for _, m := range ms {
			if m.Msg.GetRunRes() != nil {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal("no RunResponse")
	}
	var ctl []*cvms.ClientStreamMessage
	for _, m := range srv.Messages() {
		if m.Stream == "control" {
			ctl = append(ctl, m.Msg)
		}
		if m.JobID != "cvm-1" {
			t.Fatalf("stream %s without job-id metadata", m.Stream)
		}
	}
	if ctl[0].GetVTPMattestationReport() == nil {
		t.Fatalf("first control message is %v, want the attestation report", ctl[0])
	}
	if rr := ctl[1].GetRunRes(); rr == nil || rr.GetError() != "" || rr.GetComputationId() != "c1" {
		t.Fatalf("run response %v", ctl[1])
	}
	if l.Stats().Connects < 1 || len(sup.starts) != 1 {
		t.Fatalf("stats %+v starts %v", l.Stats(), sup.starts)
	}
}

func TestLinkManagerRestartedMidStream(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newRig(t)
	srv1, addr, stop1 := startManager(t, "", devmanager.Options{Computation: sampleReq(t, "c1")})
	linkLog := &logRecorder{}
	startLink(t, Config{URL: addr}, Deps{Supervisor: &testSupervisor{}, Logs: r.client, Log: linkLog.logger()})
	const n = 20000
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i++ {
			r.sink.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}})
			if i%1000 == 0 {
				time.Sleep(10 * time.Millisecond) // pacing, not waiting: lines keep coming while the manager is replaced
			}
		}
	})
	// Kill the manager once some lines arrived, then bring a new one up.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv1.Wait(ctx, func(ms []devmanager.Received) bool { return len(ms) > 3000 })
	down := linkLog.count("manager link down")
	stop1()
	linkLog.waitCount(t, "manager link down", down+1, 10*time.Second) // the link saw the manager go
	srv2, _, _ := startManager(t, addr, devmanager.Options{})
	wg.Wait()
	if st := r.sink.Stats(); st.Dropped != 0 {
		t.Fatalf("sink dropped %d", st.Dropped)
	}
	got := waitLines(t, []*devmanager.Server{srv1, srv2}, n, 30*time.Second)
	dups := checkLines(t, got, n)
	t.Logf("delivery across a manager restart: %d lines, %d duplicates (at-least-once)", n, dups)
}

func TestLinkLogfwdRestartedMidStream(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newRig(t)
	srv, addr, _ := startManager(t, "", devmanager.Options{Computation: sampleReq(t, "c1")})
	startLink(t, Config{URL: addr}, Deps{Supervisor: &testSupervisor{}, Logs: r.client})
	const n = 20000
	for i := 0; i < n; i++ {
		r.sink.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}})
		if i == n/4 || i == n/2 {
			r.restart()
		}
	}
	got := waitLines(t, []*devmanager.Server{srv}, n, 30*time.Second)
	if st := r.sink.Stats(); st.Dropped != 0 {
		t.Fatalf("sink dropped %d", st.Dropped)
	}
	dups := checkLines(t, got, n)
	t.Logf("delivery across two logfwd restarts: %d lines, %d duplicates", n, dups)
}

// TestLinkKeepsAnswersAcrossReconnect: an answer produced while the manager
// is gone (a slow stop) is sent to the next manager, in order with the
// answers after it.
func TestLinkKeepsAnswersAcrossReconnect(t *testing.T) {
	testutil.CheckLeaks(t)
	sup := &testSupervisor{stopGate: make(chan struct{}), stopped: make(chan struct{}, 1)}
	srv1, addr, stop1 := startManager(t, "", devmanager.Options{Computation: sampleReq(t, "c1")})
	startLink(t, Config{URL: addr}, Deps{Supervisor: sup})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv1.Wait(ctx, func(ms []devmanager.Received) bool { return len(ms) >= 2 })
	srv1.Command("stop c1")
	select { // the stop reached the supervisor, where it blocks
	case <-sup.stopped:
	case <-ctx.Done():
		t.Fatal("the stop did not reach the supervisor")
	}
	stop1()
	close(sup.stopGate) // the answer is made while no manager is there
	srv2, _, _ := startManager(t, addr, devmanager.Options{})
	if err := srv2.Wait(ctx, func(ms []devmanager.Received) bool {
		for _, m := range ms {
			if m.Msg.GetStopComputationRes().GetComputationId() == "c1" {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal("the stop answer made while disconnected never reached the next manager")
	}
	srv2.Command("state")
	if err := srv2.Wait(ctx, func(ms []devmanager.Received) bool {
		stopAt, stateAt := -1, -1
		for i, m := range ms {
			if m.Msg.GetStopComputationRes() != nil && stopAt < 0 {
				stopAt = i
			}
			if m.Msg.GetAgentStateRes() != nil {
				stateAt = i
			}
		}
		return stopAt >= 0 && stateAt > stopAt
	}); err != nil {
		t.Fatal("answers out of order")
	}
}

// TestLinkCorruptedSegment: a segment damaged while logfwd was down; after
// the restart the manager gets every line outside the damaged bytes, in
// order, and the LogQueueDamaged event naming exactly the lost range.
func TestLinkCorruptedSegment(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newRig(t)
	const n = 3000
	for i := 0; i < n; i++ {
		r.sink.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.between = func() {
		segs, _ := filepath.Glob(filepath.Join(r.dir, "seg-*.log"))
		f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		f.WriteAt(make([]byte, 300), st.Size()/2)
		f.Close()
	}
	r.restart()
	srv, addr, _ := startManager(t, "", devmanager.Options{})
	startLink(t, Config{URL: addr}, Deps{Supervisor: &testSupervisor{}, Logs: r.client})
	var lost struct{ LostAfter, LostBefore uint64 }
	if err := srv.Wait(ctx, func(ms []devmanager.Received) bool {
		for _, m := range ms {
			if e := m.Msg.GetAgentEvent(); e.GetEventType() == "LogQueueDamaged" {
				var d []struct{ LostAfter, LostBefore uint64 }
				if json.Unmarshal(e.GetDetails(), &d) == nil && len(d) == 1 {
					lost = d[0]
					return true
				}
			}
		}
		return false
	}); err != nil {
		t.Fatal("no LogQueueDamaged event reached the manager")
	}
	// Offsets are line+1 (one client, nothing else logged).
	firstLost, lastLost := int(lost.LostAfter), int(lost.LostBefore)-2
	want := n - (lastLost - firstLost + 1)
	deadline := time.Now().Add(10 * time.Second)
	var got []int
	for time.Now().Before(deadline) {
		if got = lines(srv.Messages()); len(got) >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	next := 0
	for _, v := range got {
		if next == firstLost {
			next = lastLost + 1
		}
		if v != next {
			t.Fatalf("line %d arrived, want %d (lost range %d..%d)", v, next, firstLost, lastLost)
		}
		next++
	}
	if next != n {
		t.Fatalf("lines up to %d arrived, want %d", next-1, n-1)
	}
	t.Logf("corrupted segment: lines %d..%d lost and reported, the other %d delivered in order", firstLost, lastLost, want)
}

func unknownOneof() *cvms.ServerStreamMessage {
	m := &cvms.ServerStreamMessage{}
	b := protowire.AppendTag(nil, 9, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("future"))
	m.ProtoReflect().SetUnknown(b)
	return m
}

func chunk(id string, data []byte, last bool) *cvms.ServerStreamMessage {
	return &cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReqChunks{RunReqChunks: &cvms.RunReqChunks{Id: id, Data: data, IsLast: last}}}
}

func TestLinkRefusesMalformedServerMessages(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newRig(t)
	srv, addr, _ := startManager(t, "", devmanager.Options{Computation: sampleReq(t, "c1")})
	l := startLink(t, Config{URL: addr, MaxRunReqBytes: 4096, ChunkTimeout: 500 * time.Millisecond}, Deps{Supervisor: &testSupervisor{}, Logs: r.client})
	wait := func(what string, cond func(*cvms.ClientStreamMessage) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		from := len(srv.Messages())
		_ = from
		if err := srv.Wait(ctx, func(ms []devmanager.Received) bool {
			for _, m := range ms {
				if cond(m.Msg) {
					return true
				}
			}
			return false
		}); err != nil {
			t.Fatalf("%s: no matching answer", what)
		}
	}
	wait("first computation", func(m *cvms.ClientStreamMessage) bool { return m.GetRunRes().GetComputationId() == "c1" })
	bad := func(id string) func(*cvms.ClientStreamMessage) bool {
		return func(m *cvms.ClientStreamMessage) bool {
			return m.GetRunRes().GetComputationId() == id && m.GetRunRes().GetError() != ""
		}
	}
	errOf := func(id string) string {
		for _, m := range srv.Messages() {
			if rr := m.Msg.GetRunRes(); rr.GetComputationId() == id && rr.GetError() != "" {
				return rr.GetError()
			}
		}
		return ""
	}
	garbage, _ := proto.Marshal(&cvms.ComputationRunReq{Id: "x"})
	tests := []struct {
		name string
		send []*cvms.ServerStreamMessage
		id   string // RunResponse id carrying the error; "" = none expected
		want string // substring of the error
	}{
		{"unknown oneof", []*cvms.ServerStreamMessage{unknownOneof()}, "", ""},
		{"chunks without is_last", []*cvms.ServerStreamMessage{chunk("c-partial", garbage, false)}, "c-partial", "no chunk with is_last"},
		{"oversized chunks", []*cvms.ServerStreamMessage{chunk("c-big", make([]byte, 3000), false), chunk("c-big", make([]byte, 3000), false), chunk("c-big", nil, true)}, "c-big", "over the 4096-byte cap"},
		{"chunks that are not a manifest", []*cvms.ServerStreamMessage{chunk("c-junk", []byte{0xff, 0xff, 0xff}, true)}, "c-junk", "not a ComputationRunReq"},
		{"runReq without algorithm", []*cvms.ServerStreamMessage{{Message: &cvms.ServerStreamMessage_RunReq{RunReq: &cvms.ComputationRunReq{Id: "c-noalgo"}}}}, "c-noalgo", "algorithm is missing"},
		{"runReq with a bad key", []*cvms.ServerStreamMessage{{Message: &cvms.ServerStreamMessage_RunReq{RunReq: func() *cvms.ComputationRunReq {
			q := sampleReq(t, "c-badkey")
			q.Algorithm.UserKey = []byte("nope")
			return q
		}()}}}, "c-badkey", "algorithm.userKey"},
		{"second computation while one runs", []*cvms.ServerStreamMessage{{Message: &cvms.ServerStreamMessage_RunReq{RunReq: sampleReq(t, "c2")}}}, "c2", "is active"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := l.Stats().Rejected
			for _, m := range tc.send {
				if err := srv.SendControl(m); err != nil {
					t.Fatal(err)
				}
			}
			if tc.id != "" {
				wait(tc.name, bad(tc.id))
				if e := errOf(tc.id); !strings.Contains(e, tc.want) {
					t.Fatalf("error %q, want it to mention %q", e, tc.want)
				}
			} else {
				deadline := time.Now().Add(5 * time.Second)
				for l.Stats().Rejected == before && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if l.Stats().Rejected == before {
					t.Fatal("message not refused")
				}
			}
			// The link survives: a state request is still answered.
			sid := fmt.Sprintf("state-%d", i)
			srv.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_AgentStateReq{AgentStateReq: &cvms.AgentStateReq{Id: sid}}})
			wait("state after "+tc.name, func(m *cvms.ClientStreamMessage) bool { return m.GetAgentStateRes().GetId() == sid })
		})
	}
	if c := l.Stats().Connects; c != 1 {
		t.Fatalf("link reconnected %d times; malformed messages must not break it", c)
	}
	// Stop, then a later computation works.
	srv.Command("stop c1")
	wait("stop", func(m *cvms.ClientStreamMessage) bool { return m.GetStopComputationRes().GetComputationId() == "c1" })
	srv.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReq{RunReq: sampleReq(t, "c3")}})
	wait("computation after stop", func(m *cvms.ClientStreamMessage) bool {
		return m.GetRunRes().GetComputationId() == "c3" && m.GetRunRes().GetError() == ""
	})
	// Disconnect: the link comes back.
	srv.Command("disconnect")
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().Connects < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if l.Stats().Connects < 2 {
		t.Fatal("no reconnect after disconnectReq")
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	env := dir + "/environment"
	os.WriteFile(env, []byte("# cocos\nAGENT_LOG_LEVEL=debug\nAGENT_CVM_GRPC_URL=\"10.0.2.2:7001\"\nAGENT_CVM_ID=abc\n"), 0o600)
	tests := []struct {
		name, file, cmdline string
		wantURL, wantID     string
		wantErr             bool
	}{
		{"file only", env, "", "10.0.2.2:7001", "abc", false},
		{"cmdline wins", env, "console=ttyS0 AGENT_CVM_GRPC_URL=127.0.0.1:9 quiet", "127.0.0.1:9", "abc", false},
		{"missing file, cmdline only", dir + "/none", "AGENT_CVM_GRPC_URL=h:1", "h:1", "", false},
		{"nothing", dir + "/none", "", "", "", true},
		{"cert without key", env, "AGENT_CVM_GRPC_CLIENT_CERT=/c.pem", "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(tc.file, tc.cmdline)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && (c.URL != tc.wantURL || c.CVMID != tc.wantID) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

// logRecorder is the link's log, for the tests that wait for its lines.
type logRecorder struct{ testutil.Buffer }

func (l *logRecorder) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// count is how many times s appears in the log.
func (l *logRecorder) count(s string) int { return strings.Count(l.String(), s) }

// waitCount waits until s appears n times in the log.
func (l *logRecorder) waitCount(t *testing.T, s string, n int, d time.Duration) {
	t.Helper()
	testutil.WaitUntil(t, d, fmt.Sprintf("%q logged %d times", s, n), func() bool { return l.count(s) >= n })
}

// The kernel command line gives Cocos's variables and cvmd's own (CVMD_*,
// the attestation mode among them), and wins over the file; other tokens
// are the kernel's.
func TestReadEnvironmentCommandLine(t *testing.T) {
	file := t.TempDir() + "/environment"
	os.WriteFile(file, []byte("CVMD_ATTESTATION=simulated\nCOCOS_EGRESS_ALLOWLIST=a.example\n"), 0o600)
	vars, err := ReadEnvironment(file, "quiet console=null CVMD_ATTESTATION=vtpm AGENT_CVM_ID=x root=/dev/sda")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"CVMD_ATTESTATION": "vtpm", "AGENT_CVM_ID": "x", "COCOS_EGRESS_ALLOWLIST": "a.example"}
	if len(vars) != len(want) {
		t.Fatalf("vars %v, want %v", vars, want)
	}
	for k, v := range want {
		if vars[k] != v {
			t.Fatalf("%s = %q, want %q (all: %v)", k, vars[k], v, vars)
		}
	}
}
