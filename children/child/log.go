package child

import (
	"log/slog"
	"os"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// newLogger returns the child's logger. Until the log forwarder client takes
// over, lines go to stderr as JSON, which the supervisor captures.
func newLogger(e *Env) *slog.Logger {
	level := slog.LevelInfo
	level.UnmarshalText([]byte(e.Config.GetLogLevel()))
	h := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	return slog.New(h).With("child", e.Config.GetName())
}

func anyOf(m proto.Message) (*anypb.Any, error) { return anypb.New(m) }
