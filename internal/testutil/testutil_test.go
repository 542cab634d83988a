package testutil

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	Main(m, Helpers{
		"args": func() int {
			os.Stdout.WriteString(strings.Join(os.Args[1:], ","))
			return 3
		},
		// leak runs CheckLeaks in a process of its own, where no goroutine
		// of an earlier test can end meanwhile and hide the leak.
		"leak": func() int {
			leakGrace = 50 * time.Millisecond
			ft := &fakeT{}
			stop := make(chan struct{})
			CheckLeaks(ft)
			go func() { <-stop }()
			ft.runCleanups()
			close(stop)
			if !ft.failed {
				return 1
			}
			return 0
		},
	})
}

func TestHelperCommandRunsTheNamedHelper(t *testing.T) {
	cmd := HelperCommand("args", "a", "b")
	var out Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 3 {
		t.Fatalf("exit: %v, want code 3", err)
	}
	if out.String() != "a,b" {
		t.Errorf("helper saw args %q, want a,b", out.String())
	}
}

func TestHelperCommandUnknownHelper(t *testing.T) {
	cmd := HelperCommand("nope")
	var out Buffer
	cmd.Stderr = &out
	cmd.Run()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(out.String(), `no helper "nope"`) {
		t.Errorf("exit %d, stderr %q", cmd.ProcessState.ExitCode(), out.String())
	}
}

func TestBufferConcurrentWritersAndReaders(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("line\n"))
				_ = b.String()
				_ = b.Lines()
			}
		})
	}
	wg.Wait()
	if n := len(b.Lines()); n != 400 {
		t.Errorf("%d lines, want 400", n)
	}
	b.Write([]byte("partial"))
	if n := len(b.Lines()); n != 400 {
		t.Errorf("a partial line counted: %d lines", n)
	}
}

func TestBenchLine(t *testing.T) {
	for _, c := range []struct {
		v    float64
		unit string
		note []string
		want string
	}{
		{12, "bytes", nil, "BENCH x 12 bytes"},
		{1.234, "ms", nil, "BENCH x 1.23 ms"},
		{123.456, "MiB/s", []string{"loopback"}, "BENCH x 123.5 MiB/s (loopback)"},
	} {
		if got := BenchLine("x", c.v, c.unit, c.note...); got != c.want {
			t.Errorf("BenchLine(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestCheckLeaksSeesALeakedGoroutine(t *testing.T) {
	if err := HelperCommand("leak").Run(); err != nil {
		t.Errorf("a goroutine left running was not reported: %v", err)
	}
}

// fakeT records failures and cleanups instead of acting on them.
type fakeT struct {
	testing.TB
	cleanups []func()
	failed   bool
}

func (f *fakeT) Helper()               {}
func (f *fakeT) Cleanup(fn func())     { f.cleanups = append(f.cleanups, fn) }
func (f *fakeT) Errorf(string, ...any) { f.failed = true }
func (f *fakeT) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestWaitUntil(t *testing.T) {
	n := 0
	WaitUntil(t, time.Second, "three polls", func() bool { n++; return n == 3 })
	ft := &fatalT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitUntil(ft, 10*time.Millisecond, "never", func() bool { return false })
	}()
	<-done
	if ft.msg != "waited 10ms for never" {
		t.Errorf("failure %q", ft.msg)
	}
}

// fatalT records Fatalf and ends the goroutine, as testing.T does.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper() {}
func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
