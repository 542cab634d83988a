package child

import (
	"context"
	"log/slog"
	"os"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/internal/logsink"
)

// logCloseTimeout bounds how long a stopping child waits for logfwd to
// acknowledge its last records.
const logCloseTimeout = 2 * time.Second

// newLogger returns the child's logger. With a "to:logfwd" edge, records go
// to the log forwarder (durable, forwarded to the manager) and WARN and above
// are mirrored to stderr as JSON, so that crash text survives even when
// logfwd is down. Without that edge (logfwd itself, tests), everything goes
// to stderr as JSON, which the supervisor captures.
func newLogger(e *Env) *slog.Logger {
	level := slog.LevelInfo
	level.UnmarshalText([]byte(e.Config.GetLogLevel()))
	name := e.Config.GetName()
	if _, ok := e.files["to:logfwd"]; ok {
		d, err := e.Dialer("logfwd")
		if err == nil {
			s, err := logsink.New(d, logsink.Options{Originator: name, ComputationID: e.Config.GetComputationId()})
			if err == nil {
				e.sink = s
				stderr := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: max(level, slog.LevelWarn)})
				return slog.New(logsink.Tee(s.Handler(level), stderr)).With("child", name)
			}
		}
	}
	h := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	return slog.New(h).With("child", name)
}

// Events returns the child's event publisher: AgentEvents with the child's
// name as originator and its computation id, sent through logfwd. Without a
// logfwd edge, events are written to the log instead.
func (e *Env) Events() logsink.Publisher {
	if e.sink != nil {
		return e.sink
	}
	return logsink.LogPublisher(e.Log, e.Config.GetName())
}

// LogSink returns the child's log forwarder client, or nil when the child has
// no "to:logfwd" edge.
func (e *Env) LogSink() *logsink.Sink { return e.sink }

// closeLog waits (bounded) for logfwd to acknowledge the child's last records.
func (e *Env) closeLog() {
	if e.sink == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), logCloseTimeout)
	defer cancel()
	if err := e.sink.Close(ctx); err != nil {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Warn("log records lost at exit", "child", e.Config.GetName(), "err", err)
	}
}

func anyOf(m proto.Message) (*anypb.Any, error) { return anypb.New(m) }
