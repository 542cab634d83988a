package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/proto/runner"
)

// scriptedRunner answers each Run with the next of its answers.
type scriptedRunner struct {
	answers []func() (*runner.RunResponse, error)
	calls   int
}

func (r *scriptedRunner) Run(context.Context, *runner.RunRequest, ...grpc.CallOption) (*runner.RunResponse, error) {
	a := r.answers[min(r.calls, len(r.answers)-1)]
	r.calls++
	return a()
}

func (r *scriptedRunner) Stop(context.Context, *runner.StopRequest, ...grpc.CallOption) (*runner.StopResponse, error) {
	return &runner.StopResponse{}, nil
}

func crashed() (*runner.RunResponse, error) {
	return nil, status.Error(codes.Unavailable, "error reading from server: EOF")
}
func succeeded() (*runner.RunResponse, error) { return &runner.RunResponse{}, nil }
func algoFailed() (*runner.RunResponse, error) {
	return &runner.RunResponse{Error: "algorithm exited with code 3", ExitCode: 3}, nil
}
func refused() (*runner.RunResponse, error) {
	return nil, status.Error(codes.InvalidArgument, "algo_type \"cobol\"")
}

// eventLog records published events.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) Event(eventType, status string, details ...any) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := eventType + "/" + status
	for _, d := range details {
		if raw, ok := d.(json.RawMessage); ok {
			var m map[string]string
			json.Unmarshal(raw, &m)
			s += " " + m["message"]
		}
	}
	l.events = append(l.events, s)
	return true
}

// TestRunAgainOnlyWhenTheRunnerCrashed: a runner that went away during Run
// (Unavailable) makes the agent run the algorithm again, at most
// MaxRunAttempts times in all, with an event each time; an algorithm that
// failed by itself, or a refused request, is not run again.
func TestRunAgainOnlyWhenTheRunnerCrashed(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answers   []func() (*runner.RunResponse, error)
		wantCalls int
		wantErr   string // "" = success
		wantEvts  []string
	}{
		{"crash then success", []func() (*runner.RunResponse, error){crashed, succeeded}, 2, "",
			[]string{"Running/Warning runner crashed, re-running algorithm (attempt 2/3)"}},
		{"two crashes then success", []func() (*runner.RunResponse, error){crashed, crashed, succeeded}, 3, "",
			[]string{"Running/Warning runner crashed, re-running algorithm (attempt 2/3)", "Running/Warning runner crashed, re-running algorithm (attempt 3/3)"}},
		{"crashes every time", []func() (*runner.RunResponse, error){crashed}, MaxRunAttempts,
			fmt.Sprintf("runner crashed during each of %d runs of the algorithm; giving up: runner: rpc error: code = Unavailable", MaxRunAttempts),
			[]string{"Running/Warning runner crashed, re-running algorithm (attempt 2/3)", "Running/Warning runner crashed, re-running algorithm (attempt 3/3)"}},
		{"algorithm fails by itself", []func() (*runner.RunResponse, error){algoFailed, succeeded}, 1, "algorithm exited with code 3", nil},
		{"request refused", []func() (*runner.RunResponse, error){refused, succeeded}, 1, "code = InvalidArgument", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			comp := t.TempDir()
			r := &scriptedRunner{answers: tc.answers}
			evs := &eventLog{}
			a := &Agent{cfg: Config{Runner: r}, log: slog.New(slog.DiscardHandler), dirs: newDirs(t.TempDir(), comp), events: newEventQueue(evs)}
			err := a.run(context.Background(), &runner.RunRequest{ComputationId: "c1"}, false)
			a.events.Close(context.Background())
			if r.calls != tc.wantCalls {
				t.Errorf("%d Run calls, want %d", r.calls, tc.wantCalls)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("run: %v, want success", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("run: %v, want an error containing %q", err, tc.wantErr)
			}
			if strings.Join(evs.events, "|") != strings.Join(tc.wantEvts, "|") {
				t.Errorf("events %q, want %q", evs.events, tc.wantEvts)
			}
			if tc.wantErr == "" {
				if _, err := os.Stat(a.dirs.resultsZip); err != nil {
					t.Errorf("no results zip after the successful run: %v", err)
				}
			}
		})
	}
}
