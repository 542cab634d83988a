package logfwd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

func line(i int) []byte {
	b, _ := proto.Marshal(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}})
	return b
}

func lineNo(t testing.TB, p []byte) (int, bool) {
	var r logs.Record
	if err := proto.Unmarshal(p, &r); err != nil {
		t.Fatalf("undecodable payload: %v", err)
	}
	var n int
	if _, err := fmt.Sscanf(r.GetLog().GetMessage(), "line %d", &n); err != nil {
		return 0, false
	}
	return n, true
}

func openQ(t *testing.T, dir string, o QueueOptions) (*Queue, Recovery) {
	t.Helper()
	q, rec, err := OpenQueue(dir, o, DropRecord)
	if err != nil {
		t.Fatalf("OpenQueue: %v", err)
	}
	return q, rec
}

func appendN(t *testing.T, q *Queue, from, n, per int) {
	t.Helper()
	for i := from; i < from+n; i += per {
		var ps [][]byte
		for j := i; j < min(i+per, from+n); j++ {
			ps = append(ps, line(j))
		}
		if _, err := q.Append(context.Background(), ps); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
}

// readAll reads every record currently in q after `after` (up to the last
// offset assigned now).
func readAll(t *testing.T, q *Queue, after uint64) []Entry {
	t.Helper()
	r := q.NewReader(after)
	defer r.Close()
	var out []Entry
	next, _, _ := q.Stats()
	for last := after; last+1 < next; {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		es, err := r.Next(ctx, 1000, 1<<20)
		cancel()
		if err != nil {
			t.Fatalf("reading the queue after offset %d of %d: %v", last, next-1, err)
		}
		out = append(out, es...)
		last = es[len(es)-1].Offset
	}
	return out
}

func TestQueueRoundTripRestartCommit(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	q, _ := openQ(t, dir, QueueOptions{MaxBytes: 1 << 20, SegmentBytes: 4 << 10})
	appendN(t, q, 0, 1000, 7)
	es := readAll(t, q, 0)
	if len(es) != 1000 {
		t.Fatalf("read %d records, want 1000", len(es))
	}
	for i, e := range es {
		if n, _ := lineNo(t, e.Payload); n != i || e.Offset != uint64(i+1) {
			t.Fatalf("record %d: line %d offset %d", i, n, e.Offset)
		}
	}
	if err := q.Commit(500); err != nil {
		t.Fatal(err)
	}
	q.Close()

	q, rec := openQ(t, dir, QueueOptions{MaxBytes: 1 << 20, SegmentBytes: 4 << 10})
	defer q.Close()
	if rec.Committed != 500 || len(rec.Damage) != 0 {
		t.Fatalf("recovery %+v", rec)
	}
	es = readAll(t, q, 0)
	if len(es) != 500 || es[0].Offset != 501 {
		t.Fatalf("after restart read %d records starting at %d, want 500 from 501", len(es), es[0].Offset)
	}
	appendN(t, q, 1000, 10, 10)
	es = readAll(t, q, 1000)
	if len(es) != 10 || es[0].Offset != 1001 {
		t.Fatalf("new appends: %d records from %v", len(es), es)
	}
}

func lastSeg(t *testing.T, dir string) string {
	m, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if len(m) == 0 {
		t.Fatal("no segment")
	}
	return m[len(m)-1]
}

func TestQueueDamage(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string)
		want    int  // records readable afterwards
		tail    bool // damage reported as a tail
		lostGap bool // a LostAfter/LostBefore bracket is reported
	}{
		{"torn tail (half a record)", func(t *testing.T, p string) {
			f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(appendRecord(nil, 101, line(100))[:15])
			f.Close()
		}, 100, true, false},
		{"garbage tail", func(t *testing.T, p string) {
			f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			f.Write([]byte("\x00\x00\x00zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"))
			f.Close()
		}, 100, true, false},
		{"flipped byte in the middle", func(t *testing.T, p string) {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			st, _ := f.Stat()
			f.WriteAt([]byte{0xff}, st.Size()/2)
			f.Close()
		}, 0, false, true},
		{"zeroed block in the middle", func(t *testing.T, p string) {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			st, _ := f.Stat()
			f.WriteAt(make([]byte, 100), st.Size()/3)
			f.Close()
		}, 0, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			q, _ := openQ(t, dir, QueueOptions{})
			appendN(t, q, 0, 100, 100)
			q.Close()
			tc.damage(t, lastSeg(t, dir))
			q, rec := openQ(t, dir, QueueOptions{})
			defer q.Close()
			if len(rec.Damage) != 1 || rec.Damage[0].Tail != tc.tail {
				t.Fatalf("damage %+v, want one with tail=%v", rec.Damage, tc.tail)
			}
			if tc.lostGap && (rec.Damage[0].LostBefore == 0 || rec.Damage[0].LostBefore <= rec.Damage[0].LostAfter+1) {
				t.Fatalf("damage %+v does not bracket the lost offsets", rec.Damage[0])
			}
			if err := ReportRecovery(context.Background(), q, rec); err != nil {
				t.Fatal(err)
			}
			appendN(t, q, 200, 5, 5)
			es := readAll(t, q, 0)
			// want + the damage event + 5 new
			if tc.lostGap {
				d := rec.Damage[0]
				tc.want = 100 - int(d.LostBefore-d.LostAfter-1)
			}
			if len(es) != tc.want+6 {
				t.Fatalf("read %d records, want %d", len(es), tc.want+6)
			}
			prev := -1
			for _, e := range es[:tc.want] {
				n, _ := lineNo(t, e.Payload)
				if n <= prev {
					t.Fatalf("out of order: %d after %d", n, prev)
				}
				prev = n
			}
			var ev logs.Record
			proto.Unmarshal(es[tc.want].Payload, &ev)
			if ev.GetEvent().GetEventType() != "LogQueueDamaged" {
				t.Fatalf("record after the survivors is %v, want the damage event", &ev)
			}
		})
	}
}

func TestQueueBoundDropsOldestWithOneEvent(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	q, _ := openQ(t, dir, QueueOptions{MaxBytes: 64 << 10, SegmentBytes: 8 << 10})
	defer q.Close()
	appendN(t, q, 0, 5000, 50)
	_, bytes, _ := q.Stats()
	if bytes > 64<<10 {
		t.Fatalf("queue holds %d bytes, over its bound", bytes)
	}
	es := readAll(t, q, 0)
	events, prev := 0, -1
	for _, e := range es {
		var r logs.Record
		proto.Unmarshal(e.Payload, &r)
		if ev := r.GetEvent(); ev != nil {
			if ev.GetEventType() != "LogsDropped" || ev.GetStatus() != "Warning" || ev.GetOriginator() != "logfwd" {
				t.Fatalf("unexpected event %v", ev)
			}
			var d struct {
				Dropped     uint64 `json:"dropped"`
				FirstOffset uint64 `json:"first_offset"`
				LastOffset  uint64 `json:"last_offset"`
			}
			if err := jsonUnmarshal(ev.GetDetails(), &d); err != nil {
				t.Fatal(err)
			}
			if d.Dropped == 0 || d.LastOffset < d.FirstOffset || d.LastOffset-d.FirstOffset+1 < d.Dropped || d.LastOffset >= e.Offset {
				t.Fatalf("drop event %+v at offset %d is inconsistent", d, e.Offset)
			}
			events++
			continue
		}
		n, _ := lineNo(t, e.Payload)
		if prev >= 0 && n != prev+1 {
			t.Fatalf("surviving lines not contiguous: %d after %d", n, prev)
		}
		prev = n
	}
	if events == 0 {
		t.Fatal("no LogsDropped event survived")
	}
	if prev != 4999 {
		t.Fatalf("newest line is %d, want 4999", prev)
	}
}

func TestQueueTailFollowsAppends(t *testing.T) {
	testutil.CheckLeaks(t)
	q, _ := openQ(t, t.TempDir(), QueueOptions{SegmentBytes: 64 << 10})
	defer q.Close()
	r := q.NewReader(0)
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		got := 0
		for got < 20000 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			es, err := r.Next(ctx, 500, 1<<20)
			cancel()
			if err != nil {
				done <- err
				return
			}
			for _, e := range es {
				if n, _ := lineNo(t, e.Payload); n != got {
					done <- fmt.Errorf("got line %d, want %d", n, got)
					return
				}
				got++
			}
		}
		done <- nil
	}()
	appendN(t, q, 0, 20000, 100)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, 1, line(1)))
	f.Add(append(appendRecord(nil, 1, line(1)), appendRecord(nil, 2, line(2))[:7]...))
	f.Add([]byte("cvmq\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, segName(1))
		os.WriteFile(p, b, 0o600)
		s := &segment{path: p, first: 1}
		if _, err := scanSegment(s, 0); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(p)
		if st.Size() != s.size {
			t.Fatalf("segment size %d after scan, file %d", s.size, st.Size())
		}
	})
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
