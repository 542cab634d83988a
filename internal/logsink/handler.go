package logsink

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

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
	bp := msgPool.Get().(*[]byte)
	b := append((*bp)[:0], r.Message...)
	b = append(b, h.attrs...)
	compID := h.compID
	r.Attrs(func(a slog.Attr) bool {
		if h.prefix == "" && a.Key == ComputationKey {
			compID = a.Value.String()
			return true
		}
		b = appendAttr(b, h.prefix, a)
		return true
	})
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	if compID == "" {
		compID = h.sink.ComputationID()
	}
	raw := encodeLogParts(b, compID, levelName(r.Level), true, ts.Unix(), int32(ts.Nanosecond()))
	if cap(b) <= 64<<10 {
		*bp = b
		msgPool.Put(bp)
	}
	h.sink.putRaw(raw)
	// A dropped record is counted and reported by the Sink; returning an error
	// here would only make slog print to stderr, which is not ours to do.
	return nil
}

// msgPool holds the buffers messages are assembled in.
var msgPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	b := []byte(h.attrs)
	for _, a := range as {
		if h.prefix == "" && a.Key == ComputationKey {
			n.compID = a.Value.String()
			continue
		}
		b = appendAttr(b, h.prefix, a)
	}
	n.attrs = string(b)
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

func appendAttr(b []byte, prefix string, a slog.Attr) []byte {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return b
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			b = appendAttr(b, p, g)
		}
		return b
	}
	b = append(b, ' ')
	if prefix == "" {
		b = appendQuoted(b, a.Key)
	} else {
		b = appendQuoted(b, prefix+a.Key)
	}
	b = append(b, '=')
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		return appendQuoted(b, v.String())
	case slog.KindInt64:
		return strconv.AppendInt(b, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(b, v.Uint64(), 10)
	case slog.KindBool:
		return strconv.AppendBool(b, v.Bool())
	case slog.KindFloat64:
		return strconv.AppendFloat(b, v.Float64(), 'g', -1, 64)
	case slog.KindTime:
		return v.Time().AppendFormat(b, time.RFC3339Nano)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return appendQuoted(b, err.Error())
		}
		return appendQuoted(b, fmt.Sprint(v.Any()))
	default:
		return appendQuoted(b, v.String())
	}
}

// appendQuoted appends s as is when it is a plain token, else Go-quoted,
// the way slog's text handler does.
func appendQuoted(b []byte, s string) []byte {
	if s == "" {
		return append(b, `""`...)
	}
	if needsQuote(s) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

func needsQuote(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			// Rare: check the runes.
			for _, r := range s[i:] {
				if r == '=' || r == '"' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
					return true
				}
			}
			return false
		}
		if c <= ' ' || c == '=' || c == '"' || c == 0x7f {
			return true
		}
	}
	return false
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
