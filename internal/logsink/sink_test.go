package logsink_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cvmd/cvmd/children/logfwd"
	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// server is a real logfwd queue + Collector behind a listener; edges are
// added with connect.
type server struct {
	q  *logfwd.Queue
	ln *ipc.Listener
}

func newServer(t *testing.T) *server {
	q, _, err := logfwd.OpenQueue(t.TempDir(), logfwd.QueueOptions{}, logfwd.DropRecord)
	if err != nil {
		t.Fatal(err)
	}
	ln := ipc.NewListener("logfwd")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { logfwd.Serve(ctx, q, ln, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done; ln.Close(); q.Close() })
	return &server{q: q, ln: ln}
}

// connect returns the client end of a new edge served by s.
func (s *server) connect(t *testing.T) *ipc.Dialer {
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "logfwd")
	if err != nil {
		t.Fatal(err)
	}
	s.ln.Add(srv)
	d := ipc.NewDialer("logfwd", cli)
	t.Cleanup(func() { d.Close() })
	return d
}

// records returns every record stored so far (up to the queue's last
// offset now).
func (s *server) records(t *testing.T) []*logs.Record {
	r := s.q.NewReader(0)
	defer r.Close()
	var out []*logs.Record
	next, _, _ := s.q.Stats()
	for last := uint64(0); last+1 < next; {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		es, err := r.Next(ctx, 1000, 1<<20)
		cancel()
		if err != nil {
			t.Fatalf("reading the queue after offset %d of %d: %v", last, next-1, err)
		}
		for _, e := range es {
			last = e.Offset
			var rec logs.Record
			if err := proto.Unmarshal(e.Payload, &rec); err != nil {
				t.Fatalf("stored record does not decode: %v", err)
			}
			out = append(out, &rec)
		}
	}
	return out
}

func TestHandlerKeepsAttributes(t *testing.T) {
	srv := newServer(t)
	s, err := logsink.New(srv.connect(t), logsink.Options{Originator: "agent", ComputationID: "c0"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(s.Handler(slog.LevelDebug)).With("child", "agent")
	tests := []struct {
		name  string
		log   func()
		msg   string
		level string
		cid   string
	}{
		{"plain", func() { log.Info("hello") }, "hello child=agent", "INFO", "c0"},
		{"attrs quoted when needed", func() { log.Warn("upload", "file", "iris.csv", "note", "two words", "n", 3) },
			`upload child=agent file=iris.csv note="two words" n=3`, "WARN", "c0"},
		{"groups prefix keys", func() { log.WithGroup("run").Debug("x", "id", 7, slog.Group("lim", "mem", 64)) },
			"x child=agent run.id=7 run.lim.mem=64", "DEBUG", "c0"},
		{"computation id attribute", func() { log.Error("failed", "computation_id", "c9", "err", fmt.Errorf("boom")) },
			"failed child=agent err=boom", "ERROR", "c9"},
	}
	for _, tc := range tests {
		tc.log()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	recs := srv.records(t)
	if len(recs) != len(tests) {
		t.Fatalf("%d records stored, want %d", len(recs), len(tests))
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := recs[i].GetLog()
			if l.GetMessage() != tc.msg || l.GetLevel() != tc.level || l.GetComputationId() != tc.cid || l.GetTimestamp() == nil {
				t.Fatalf("got %v, want message %q level %s computation %s", l, tc.msg, tc.level, tc.cid)
			}
		})
	}
}

func TestEventCarriesOriginatorAndDetails(t *testing.T) {
	srv := newServer(t)
	s, _ := logsink.New(srv.connect(t), logsink.Options{Originator: "computation-runner", ComputationID: "c1"})
	s.Event("AlgorithmRun", "Warning", "stderr", "oops", "code", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Close(ctx)
	recs := srv.records(t)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	e := recs[0].GetEvent()
	if e.GetOriginator() != "computation-runner" || e.GetComputationId() != "c1" || e.GetEventType() != "AlgorithmRun" ||
		e.GetStatus() != "Warning" || string(e.GetDetails()) != `{"code":2,"stderr":"oops"}` {
		t.Fatalf("event %v", e)
	}
}

// TestDropsAreCountedAndReported: with logfwd away the buffer fills, Put
// stops blocking after MaxWait and counts drops; once logfwd is back, one
// record says how many were lost, and everything accepted arrives.
func TestDropsAreCountedAndReported(t *testing.T) {
	srv := newServer(t)
	d := ipc.NewDialer("logfwd", nil) // no edge yet: logfwd is "down"
	defer d.Close()
	s, _ := logsink.New(d, logsink.Options{Originator: "agent", BufferBytes: 4096, MaxWait: time.Millisecond})
	accepted := 0
	start := time.Now()
	for i := 0; i < 500; i++ {
		if s.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}}) {
			accepted++
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("500 Puts took %s: the caller was blocked", el)
	}
	st := s.Stats()
	if st.Dropped == 0 || st.Dropped+uint64(accepted) != 500 {
		t.Fatalf("stats %+v, accepted %d", st, accepted)
	}
	// logfwd comes up.
	cli, se, _ := ipc.Socketpair(unix.SOCK_SEQPACKET, "logfwd")
	srv.ln.Add(se)
	d.Replace(cli)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: "after", Level: "INFO"}}})
	s.Close(ctx)
	recs := srv.records(t)
	if len(recs) != accepted+2 {
		t.Fatalf("%d records stored, want %d accepted + report + after", len(recs), accepted)
	}
	report := recs[accepted].GetLog()
	want := fmt.Sprintf("logsink: dropped %d records", st.Dropped)
	if !strings.HasPrefix(report.GetMessage(), want) || report.GetLevel() != "WARN" {
		t.Fatalf("report %v, want %q", report, want)
	}
}

var encodeTests = []*cvms.AgentLog{
	{Message: "hello", Level: "INFO", ComputationId: "c1", Timestamp: timestamppb.New(time.Unix(1700000000, 123))},
	{Message: "", Level: "DEBUG"},
	{Message: strings.Repeat("long ", 100), Timestamp: timestamppb.New(time.Unix(0, 5))},
	{Message: "t0", Timestamp: &timestamppb.Timestamp{}},
	{Message: "ünïcødé ✓", ComputationId: "x"},
}

func TestEncodeMatchesProto(t *testing.T) {
	for i, l := range encodeTests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&logs.Record{Body: &logs.Record_Log{Log: l}})
			got := logsink.EncodeLogForTest(l)
			if !bytes.Equal(got, want) {
				t.Fatalf("encoding differs:\n got %x\nwant %x", got, want)
			}
		})
	}
}

func FuzzEncodeLog(f *testing.F) {
	for _, l := range encodeTests {
		f.Add(l.GetMessage(), l.GetComputationId(), l.GetLevel(), int64(1700000000), int32(7))
	}
	f.Add("\xff\xfe bad utf8", "c", "INFO", int64(-1), int32(-1))
	f.Fuzz(func(t *testing.T, msg, cid, lvl string, sec int64, nanos int32) {
		l := &cvms.AgentLog{Message: msg, ComputationId: cid, Level: lvl, Timestamp: &timestamppb.Timestamp{Seconds: sec, Nanos: nanos}}
		var r logs.Record
		if err := proto.Unmarshal(logsink.EncodeLogForTest(l), &r); err != nil {
			t.Fatalf("hand encoding does not decode: %v", err)
		}
		if got := r.GetLog(); got.GetTimestamp().GetSeconds() != sec || got.GetTimestamp().GetNanos() != nanos {
			t.Fatalf("timestamp %v, want %d.%d", got.GetTimestamp(), sec, nanos)
		}
	})
}

func TestHugeMessageIsTruncatedNotStuck(t *testing.T) {
	srv := newServer(t)
	s, _ := logsink.New(srv.connect(t), logsink.Options{Originator: "agent"})
	slog.New(s.Handler(nil)).Info(strings.Repeat("x", 10<<20))
	s.Event("Big", "ok", "blob", strings.Repeat("y", 1<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	recs := srv.records(t)
	if len(recs) != 2 {
		t.Fatalf("%d records stored", len(recs))
	}
	if m := recs[0].GetLog().GetMessage(); len(m) > logsink.MaxText+100 || !strings.Contains(m, "truncated") {
		t.Fatalf("message of %d bytes, want it truncated to about %d", len(m), logsink.MaxText)
	}
	if d := string(recs[1].GetEvent().GetDetails()); !strings.Contains(d, "logsink_truncated_bytes") {
		t.Fatalf("details %q", d)
	}
}
