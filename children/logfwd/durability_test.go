package logfwd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// TestMain turns the test binary into a logfwd process when asked: it
// serves the queue in the directory os.Args[1] on the edge passed as fd 3.
func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Helpers{"logfwd": func() int { return helperMain(os.Args[1]) }})
}

func helperMain(dir string) int {
	q, rec, err := OpenQueue(dir, QueueOptions{}, DropRecord)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	ReportRecovery(ctx, q, rec)
	ln := ipc.NewListener("logfwd")
	ln.Add(os.NewFile(3, "from:child"))
	err = Serve(ctx, q, ln, nil)
	q.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startHelper runs a logfwd process on dir and returns it and the client
// end of its edge.
func startHelper(t *testing.T, dir string) (*exec.Cmd, *os.File) {
	t.Helper()
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "logfwd")
	if err != nil {
		t.Fatal(err)
	}
	cmd := testutil.HelperCommand("logfwd", dir)
	cmd.ExtraFiles = []*os.File{srv}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	return cmd, cli
}

func putLine(s *logsink.Sink, i int) bool {
	return s.Put(&logs.Record{Body: &logs.Record_Log{Log: &cvms.AgentLog{Message: fmt.Sprintf("line %d", i), Level: "INFO"}}})
}

// verifyQueue reads every line in dir's queue and checks 0..n-1 are all
// there, first occurrences in order. It returns the duplicates.
func verifyQueue(t *testing.T, dir string, n int) int {
	t.Helper()
	q, _ := openQ(t, dir, QueueOptions{})
	defer q.Close()
	seen := make([]bool, n)
	next, dups := 0, 0
	for _, e := range readAll(t, q, 0) {
		v, ok := lineNo(t, e.Payload)
		if !ok {
			continue // an event (e.g. damage report)
		}
		if seen[v] {
			dups++
			continue
		}
		if v != next {
			t.Fatalf("line %d stored before line %d", v, next)
		}
		seen[v] = true
		next++
	}
	if next != n {
		t.Fatalf("queue holds lines 0..%d, want all %d", next-1, n)
	}
	return dups
}

func TestKillDuringBurstLosesNothingAcked(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	cmd, cli := startHelper(t, dir)
	d := ipc.NewDialer("logfwd", cli)
	defer d.Close()
	sink, err := logsink.New(d, logsink.Options{Originator: "test", MaxWait: 30 * time.Second, BufferBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100000
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i++ {
			putLine(sink, i)
		}
	})
	for kill := 1; kill <= 3; kill++ {
		testutil.WaitUntil(t, time.Minute, fmt.Sprintf("%d records acknowledged", kill*n/5), func() bool { return sink.Stats().Acked >= uint64(kill*n/5) })
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		var next *os.File
		cmd, next = startHelper(t, dir)
		d.Replace(next)
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := sink.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st := sink.Stats()
	if st.Dropped != 0 {
		t.Fatalf("sink dropped %d records", st.Dropped)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	dups := verifyQueue(t, dir, n)
	t.Logf("3 SIGKILLs during %d lines: all stored in order, %d duplicates (resent after a kill, at-least-once), %d resent", n, dups, st.Resent)
}

func TestDiskFullRefusesThenRecovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for tmpfs")
	}
	testutil.CheckLeaks(t)
	dir := filepath.Join(t.TempDir(), "q")
	os.Mkdir(dir, 0o700)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	q, _ := openQ(t, dir, QueueOptions{MaxBytes: 64 << 20, SegmentBytes: 128 << 10})
	defer q.Close()
	ln := ipc.NewListener("logfwd")
	cli, srv, _ := ipc.Socketpair(unix.SOCK_SEQPACKET, "logfwd")
	ln.Add(srv)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { Serve(ctx, q, ln, nil); close(served) }()
	defer func() { cancel(); <-served; ln.Close() }()
	d := ipc.NewDialer("logfwd", cli)
	defer d.Close()
	sink, _ := logsink.New(d, logsink.Options{MaxWait: 30 * time.Second, BufferBytes: 16 << 20})
	const n = 60000 // ~3 MB of records through a 1 MiB disk
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i++ {
			putLine(sink, i)
		}
	})
	// The "manager": starts late, so the disk fills first, then reads and commits.
	testutil.WaitUntil(t, time.Minute, "a write refused by the full disk", func() bool { return q.WriteErrors() > 0 })
	r := q.NewReader(0)
	defer r.Close()
	next, dups, commitErrs := 0, 0, 0
	seen := make([]bool, n)
	for next < n {
		rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
		es, err := r.Next(rctx, 1000, 1<<20)
		rcancel()
		if err != nil {
			t.Fatalf("reading at line %d: %v", next, err)
		}
		for _, e := range es {
			v, ok := lineNo(t, e.Payload)
			if !ok {
				continue
			}
			if seen[v] {
				dups++
				continue
			}
			if v != next {
				t.Fatalf("line %d before line %d", v, next)
			}
			seen[v] = true
			next++
		}
		// The commit file may not fit on a full disk; the segments are
		// deleted anyway and the next commit rewrites it.
		if err := q.Commit(es[len(es)-1].Offset); err != nil {
			commitErrs++
		}
	}
	wg.Wait()
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := sink.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if st := sink.Stats(); st.Dropped != 0 {
		t.Fatalf("sink dropped %d", st.Dropped)
	}
	t.Logf("disk full %d times (%d commit-file writes failed): all %d lines delivered in order, %d duplicates", q.WriteErrors(), commitErrs, n, dups)
}
