package logsink

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// ComputationKey is the attribute key that, when logged, sets the record's
// computation id instead of being written into the message.
const ComputationKey = "computation_id"

// Handler returns a slog.Handler that turns records at or above level into
// cvms.AgentLog records in s. Attributes are appended to the message as
// key=value pairs (values quoted when needed); groups prefix their keys.
func (s *Sink) Handler(level slog.Leveler) slog.Handler {
	if level == nil {
		level = slog.LevelInfo
	}
	return &handler{sink: s, level: level}
}

type handler struct {
	sink   *Sink
	level  slog.Leveler
	prefix string // group prefix for new attrs, "g1.g2."
	attrs  string // preformatted " k=v" pairs from WithAttrs
	compID string // from a WithAttrs computation_id
}

func (h *handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.Grow(len(r.Message) + len(h.attrs) + 24*r.NumAttrs())
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	compID := h.compID
	r.Attrs(func(a slog.Attr) bool {
		if h.prefix == "" && a.Key == ComputationKey {
			compID = a.Value.String()
			return true
		}
		appendAttr(&b, h.prefix, a)
		return true
	})
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	if compID == "" {
		compID = h.sink.ComputationID()
	}
	h.sink.putRaw(encodeLogParts(clipText(b.String()), compID, levelName(r.Level), true, ts.Unix(), int32(ts.Nanosecond())))
	// A dropped record is counted and reported by the Sink; returning an error
	// here would only make slog print to stderr, which is not ours to do.
	return nil
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		if h.prefix == "" && a.Key == ComputationKey {
			n.compID = a.Value.String()
			continue
		}
		appendAttr(&b, h.prefix, a)
	}
	n.attrs = b.String()
	return &n
}

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.prefix = h.prefix + name + "."
	return &n
}

// levelName maps slog levels onto Cocos's four level names.
func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "DEBUG"
	case l < slog.LevelWarn:
		return "INFO"
	case l < slog.LevelError:
		return "WARN"
	default:
		return "ERROR"
	}
}

func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			appendAttr(b, p, g)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(quote(prefix + a.Key))
	b.WriteByte('=')
	var v string
	switch a.Value.Kind() {
	case slog.KindTime:
		v = a.Value.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			v = err.Error()
		} else {
			v = fmt.Sprint(a.Value.Any())
		}
	default:
		v = a.Value.String()
	}
	b.WriteString(quote(v))
}

// quote returns s as is when it is a plain token, else Go-quoted, the way
// slog's text handler does.
func quote(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == '=' || r == '"' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// Event queues an AgentEvent with the Sink's originator and computation id.
// details are key/value pairs (as for slog) encoded as a JSON object; a
// single map or struct argument is encoded as is. It reports whether the
// event was accepted (a refused one is counted and reported like a log).
func (s *Sink) Event(eventType, status string, details ...any) bool {
	return s.Put(&logs.Record{Body: &logs.Record_Event{Event: &cvms.AgentEvent{
		EventType: eventType,
		Status:    status,
		Details:   encodeDetails(details),
		Timestamp: timestamppb.Now(),
	}}})
}

func encodeDetails(details []any) []byte {
	if len(details) == 0 {
		return nil
	}
	var v any
	if len(details) == 1 {
		v = details[0]
	} else {
		m := map[string]any{}
		for i := 0; i < len(details); i += 2 {
			k := fmt.Sprint(details[i])
			if i+1 == len(details) {
				m["!BADKEY"] = k
				break
			}
			d := details[i+1]
			if err, ok := d.(error); ok {
				d = err.Error()
			}
			m[k] = d
		}
		v = m
	}
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": "logsink: details not encodable: " + err.Error()})
	}
	return b
}

// Publisher publishes events. *Sink is one; LogPublisher is the fallback for
// a process that has no edge to logfwd.
type Publisher interface {
	Event(eventType, status string, details ...any) bool
}

// LogPublisher returns a Publisher that writes events to log at INFO.
func LogPublisher(log *slog.Logger, originator string) Publisher {
	return logPublisher{log: log, originator: originator}
}

type logPublisher struct {
	log        *slog.Logger
	originator string
}

func (p logPublisher) Event(eventType, status string, details ...any) bool {
	p.log.Info("event", "event_type", eventType, "status", status, "originator", p.originator, "details", string(encodeDetails(details)))
	return true
}

// Tee returns a handler that sends each record to every handler that is
// enabled for its level.
func Tee(hs ...slog.Handler) slog.Handler { return tee(hs) }

type tee []slog.Handler

func (t tee) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range t {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (t tee) Handle(ctx context.Context, r slog.Record) error {
	var first error
	for _, h := range t {
		if h.Enabled(ctx, r.Level) {
			if err := h.Handle(ctx, r.Clone()); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

func (t tee) WithAttrs(as []slog.Attr) slog.Handler {
	n := make(tee, len(t))
	for i, h := range t {
		n[i] = h.WithAttrs(as)
	}
	return n
}

func (t tee) WithGroup(name string) slog.Handler {
	n := make(tee, len(t))
	for i, h := range t {
		n[i] = h.WithGroup(name)
	}
	return n
}
