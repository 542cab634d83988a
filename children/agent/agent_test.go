package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/proto/logs"
)

func TestTransitions(t *testing.T) {
	tests := []struct {
		from    State
		ev      Event
		hasData bool
		want    State
		ok      bool
	}{
		{Idle, EvStart, false, ReceivingManifest, true},
		{ReceivingManifest, EvManifestReceived, false, ReceivingAlgorithm, true},
		{ReceivingAlgorithm, EvAlgorithmReceived, true, ReceivingData, true},
		{ReceivingAlgorithm, EvAlgorithmReceived, false, Running, true},
		{ReceivingData, EvDataReceived, true, Running, true},
		{Running, EvRunComplete, true, ConsumingResults, true},
		{Running, EvRunFailed, true, Failed, true},
		{ReceivingData, EvRunFailed, true, Failed, true},
		{ConsumingResults, EvResultsConsumed, true, Complete, true},
		// Anything else is refused and the state stays.
		{Complete, EvResultsConsumed, true, Complete, false},
		{Failed, EvStart, true, Failed, false},
		{ReceivingData, EvAlgorithmReceived, true, ReceivingData, false},
		{Idle, EvManifestReceived, false, Idle, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s+%s", tc.from, tc.ev), func(t *testing.T) {
			got, ok := next(tc.from, tc.ev, tc.hasData)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("got %s %v, want %s %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

var sigB64 = base64.StdEncoding.EncodeToString([]byte("sig"))

var metaTests = []struct {
	name    string
	md      metadata.MD
	want    requestMeta
	wantErr error
}{
	{"algo_type missing means bin", metadata.Pairs("signature", sigB64), requestMeta{AlgoType: "bin", PythonRuntime: "python3", Signature: []byte("sig")}, nil},
	{"empty algo_type means bin", metadata.Pairs("signature", sigB64, "algo_type", ""), requestMeta{AlgoType: "bin", PythonRuntime: "python3", Signature: []byte("sig")}, nil},
	{"everything", metadata.Pairs("user-id", "algorithm-provider", "signature", sigB64, "algo_type", "python", "algo_args", "a", "algo_args", "b c", "python_runtime", "python3.11", "decompress", "true"),
		requestMeta{Role: "algorithm-provider", Signature: []byte("sig"), AlgoType: "python", AlgoArgs: []string{"a", "b c"}, PythonRuntime: "python3.11", Decompress: true}, nil},
	{"decompress is only true when true", metadata.Pairs("signature", sigB64, "decompress", "TRUE"), requestMeta{AlgoType: "bin", PythonRuntime: "python3", Signature: []byte("sig")}, nil},
	{"no signature", metadata.Pairs("user-id", "consumer"), requestMeta{}, ErrUnauthenticated},
	{"two signatures", metadata.Pairs("signature", sigB64, "signature", sigB64), requestMeta{}, ErrUnauthenticated},
	{"signature not base64", metadata.Pairs("signature", "%%%"), requestMeta{}, ErrUnauthenticated},
	{"unknown algo_type", metadata.Pairs("signature", sigB64, "algo_type", "cobol"), requestMeta{}, ErrInvalidArgument},
	{"a role challenge", metadata.Pairs("signature", sigB64, "cvmd-role-challenge", nonceB64),
		requestMeta{AlgoType: "bin", PythonRuntime: "python3", Signature: []byte("sig"), Challenge: bytes.Repeat([]byte{9}, 32)}, nil},
	{"a short challenge", metadata.Pairs("signature", sigB64, "cvmd-role-challenge", sigB64), requestMeta{}, ErrUnauthenticated},
	{"two challenges", metadata.Pairs("signature", sigB64, "cvmd-role-challenge", nonceB64, "cvmd-role-challenge", nonceB64), requestMeta{}, ErrUnauthenticated},
}

var nonceB64 = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))

func TestParseMeta(t *testing.T) {
	for _, tc := range metaTests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMeta(tc.md)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseMeta(f *testing.F) {
	for _, tc := range metaTests {
		f.Add(strings.Join(tc.md.Get("signature"), ","), strings.Join(tc.md.Get("algo_type"), ","), strings.Join(tc.md.Get("algo_args"), ","), strings.Join(tc.md.Get("decompress"), ","), strings.Join(tc.md.Get("cvmd-role-challenge"), ","))
	}
	f.Fuzz(func(t *testing.T, sig, algoType, args, decompress, challenge string) {
		md := metadata.MD{}
		for k, v := range map[string]string{"signature": sig, "algo_type": algoType, "algo_args": args, "decompress": decompress, "cvmd-role-challenge": challenge} {
			if v != "" {
				md[k] = strings.Split(v, ",")
			}
		}
		m, err := parseMeta(md)
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) && !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		switch m.AlgoType {
		case "bin", "python", "wasm", "docker":
		default:
			t.Fatalf("accepted algo_type %q", m.AlgoType)
		}
		if len(m.Signature) == 0 {
			t.Fatal("accepted an empty signature")
		}
		if m.Challenge != nil && len(m.Challenge) != 32 {
			t.Fatalf("accepted a %d-byte challenge", len(m.Challenge))
		}
	})
}

func TestToStatusKeepsCocosTexts(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{ErrWrongState, codes.FailedPrecondition, "agent not expecting this operation in the current state"},
		{ErrHashMismatch, codes.InvalidArgument, "malformed data, hash does not match manifest"},
		{fmt.Errorf("%w: %q", ErrDatasetNotDeclared, "x.csv"), codes.NotFound, `dataset not declared in computation manifest: "x.csv"`},
		{ErrUndeclaredConsumer, codes.PermissionDenied, "result consumer is undeclared in computation manifest"},
		{fmt.Errorf("%w: x", ErrTooLarge), codes.ResourceExhausted, "upload exceeds the agent's size limit: x"},
		{errors.New("open /secret/path: permission denied"), codes.Internal, "agent internal error (details in the agent's log)"},
	}
	for _, tc := range tests {
		s, _ := status.FromError(toStatus(log, "M", tc.err))
		if s.Code() != tc.code || s.Message() != tc.msg {
			t.Errorf("%v → %s %q, want %s %q", tc.err, s.Code(), s.Message(), tc.code, tc.msg)
		}
	}
}

// refusing is a publisher that refuses its first n events, like a full or
// absent log forwarder.
type refusing struct {
	mu   sync.Mutex
	n    int
	got  []string
	seen int
}

func (r *refusing) Event(eventType, status string, _ ...any) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen++
	if r.seen <= r.n {
		return false
	}
	r.got = append(r.got, eventType+"/"+status)
	return true
}

// TestEventQueueNeverDrops: refused events are retried with back-off (10,
// 20, 40 ms: fake time in the bubble) and delivered in order.
func TestEventQueueNeverDrops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &refusing{n: 3}
		q := newEventQueue(p)
		var want []string
		for i := 0; i < 50; i++ {
			q.Publish("c", fmt.Sprint("e", i), StatusInProgress)
			want = append(want, fmt.Sprint("e", i)+"/"+StatusInProgress)
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.Close(ctx)
		if strings.Join(p.got, ",") != strings.Join(want, ",") {
			t.Fatalf("delivered %v", p.got)
		}
		if el := time.Since(start); el != 70*time.Millisecond {
			t.Errorf("delivered after %s of back-off, want 10+20+40 ms", el)
		}
	})
}

// TestEventQueueCloseGivesUpAtItsDeadline: with a publisher that never
// takes events, Close returns when its context ends, not later.
func TestEventQueueCloseGivesUpAtItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newEventQueue(&refusing{n: 1 << 30})
		q.Publish("c", "Running", StatusInProgress)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		q.Close(ctx)
		// The loop notices the abandon after its current back-off (≤ 1 s).
		if el := time.Since(start); el < 5*time.Second || el > 6*time.Second {
			t.Errorf("Close returned after %s, want 5 s (its deadline) plus at most one back-off", el)
		}
	})
}

// putter stands for *logsink.Sink's Put: it keeps whole records.
type putter struct {
	refusing
	recs []*logs.Record
}

func (p *putter) Put(r *logs.Record) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recs = append(p.recs, r)
	return true
}

func TestEventsKeepTheirComputationAndTime(t *testing.T) {
	p := &putter{}
	q := newEventQueue(p)
	before := time.Now()
	q.Publish("comp-9", "Stopped", "Stopped")
	q.Publish("comp-9", "Running", "Failed", "error", "exit status 3")
	q.Close(context.Background())
	if len(p.recs) != 2 || string(p.recs[1].GetEvent().GetDetails()) != `{"error":"exit status 3"}` {
		t.Fatalf("%d records", len(p.recs))
	}
	ev := p.recs[0].GetEvent()
	if ev.GetComputationId() != "comp-9" || ev.GetEventType() != "Stopped" || ev.GetTimestamp().AsTime().Before(before.Add(-time.Second)) {
		t.Fatalf("event %v", ev)
	}
}
