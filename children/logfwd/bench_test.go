package logfwd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
)

// TestBenchLogThroughput measures sustained logging from several clients
// (logsink over ipc edges, as children do) into the durable queue: every
// counted byte was acknowledged, i.e. fsynced. Prints BENCH log_mib_s.
func TestBenchLogThroughput(t *testing.T) {
	testutil.BenchOn(t)
	const clients = 4
	const dur = 5 * time.Second
	q, _ := openQ(t, t.TempDir(), QueueOptions{MaxBytes: 4 << 30, SegmentBytes: 64 << 20})
	defer q.Close()
	ln := ipc.NewListener("logfwd")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	var sinks []*logsink.Sink
	var dialers []*ipc.Dialer
	for i := 0; i < clients; i++ {
		cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "logfwd")
		if err != nil {
			t.Fatal(err)
		}
		ln.Add(srv)
		d := ipc.NewDialer("logfwd", cli)
		dialers = append(dialers, d)
		s, err := logsink.New(d, logsink.Options{Originator: fmt.Sprint("c", i), MaxWait: time.Second, BufferBytes: 32 << 20, BatchBytes: 1 << 20, Window: 16})
		if err != nil {
			t.Fatal(err)
		}
		sinks = append(sinks, s)
	}
	go func() { Serve(ctx, q, ln, nil); close(served) }()
	// What a child does: slog with a few attributes, ~200-byte records.
	msg := strings.Repeat("x", 120)
	var wg sync.WaitGroup
	stop := time.Now().Add(dur)
	cpu0 := cpuTime()
	start := time.Now()
	for _, s := range sinks {
		wg.Go(func() {
			log := slog.New(s.Handler(slog.LevelInfo)).With("child", "agent")
			for i := 0; i%256 != 0 || time.Now().Before(stop); i++ {
				log.Info(msg, "seq", i, "state", "Running")
			}
			fctx, c := context.WithTimeout(context.Background(), 30*time.Second)
			s.Flush(fctx)
			c()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	_, bytes, _ := q.Stats()
	var dropped uint64
	for _, s := range sinks {
		dropped += s.Stats().Dropped
		s.Close(context.Background())
	}
	cancel()
	<-served
	ln.Close()
	for _, d := range dialers {
		d.Close()
	}
	mib := float64(bytes) / (1 << 20) / elapsed.Seconds()
	t.Logf("%d clients, %.1f MiB on disk in %s, %d dropped", clients, float64(bytes)/(1<<20), elapsed, dropped)
	testutil.Bench("log_mib_s", mib, "MiB/s")
	// Load-independent efficiency: MiB per CPU-second of the whole path
	// (clients, gRPC over the edges, logfwd), i.e. the rate on one free core.
	testutil.Bench("log_mib_per_cpu_s", float64(bytes)/(1<<20)/cpu.Seconds(), "MiB/cpu-s")
	testutil.Bench("log_disk_ref_mib_s", diskRate(t), "MiB/s")
}

// diskRate is the reference: plain 4 MiB writes each followed by fdatasync,
// into the same file system, measured in the same run.
func diskRate(t *testing.T) float64 {
	f, err := os.CreateTemp(t.TempDir(), "ref")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	start := time.Now()
	n := 0
	for time.Since(start) < 2*time.Second {
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
		unix.Fdatasync(int(f.Fd()))
		n += len(buf)
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds()
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
