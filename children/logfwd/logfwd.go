// Package logfwd is the log forwarder child (`cvmd logfwd`): it keeps every
// log record and event of the VM in a durable, bounded queue on disk until
// the supervisor's manager link has handed them to the manager.
//
// It serves proto/logs Collector on every "from:*" edge: children Push
// batches (acknowledged only once fsynced), the supervisor Reads the queue
// from an offset and Commits what the manager received, which deletes it.
// The queue format and the guarantees are in docs/logging.md.
//
// logfwd does not talk to the manager itself, does not deduplicate records,
// and has no network. It imports child, ipc and proto only.
package logfwd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// Main runs the logfwd child.
func Main(ctx context.Context, env *child.Env) error {
	var set config.LogfwdSettings
	if err := env.Settings(&set); err != nil {
		return err
	}
	dir := set.GetDir()
	if dir == "" {
		dir = env.Config.GetStateDir()
	}
	if dir == "" {
		return errors.New("logfwd: no queue directory (settings.dir and state_dir are empty)")
	}
	q, rec, err := OpenQueue(dir, QueueOptions{MaxBytes: int64(set.GetMaxBytes()), SegmentBytes: int64(set.GetSegmentBytes())}, DropRecord)
	if err != nil {
		return err
	}
	defer q.Close()
	env.Log.Info("queue opened", "dir", dir, "segments", rec.Segments, "records", rec.Records, "committed", rec.Committed)
	if err := ReportRecovery(ctx, q, rec); err != nil {
		env.Log.Warn("reporting queue recovery", "err", err)
	}
	for _, d := range rec.Damage {
		env.Log.Warn("queue damage skipped", "segment", d.Segment, "at", d.At, "bytes", d.Bytes, "tail", d.Tail)
	}
	return Serve(ctx, q, env.Listener(), env.Ready)
}

// Serve serves the Collector on ln until ctx ends, calling ready once
// serving. It closes ln.
func Serve(ctx context.Context, q *Queue, ln net.Listener, ready func() error) error {
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(16 << 20))
	logs.RegisterCollectorServer(srv, &Server{Q: q, Done: ctx})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if ready != nil {
		if err := ready(); err != nil {
			srv.Stop()
			<-errc
			return err
		}
	}
	select {
	case err := <-errc:
		return fmt.Errorf("logfwd: serving: %w", err)
	case <-ctx.Done():
	}
	// Let pending pushes finish their fsync and ack; Read streams end at
	// once (Server.Done), so a tailing supervisor does not hold us up.
	child.StopServer(srv, 2*time.Second)
	<-errc
	return nil
}

// DropRecord encodes the event that reports records removed by the size bound.
func DropRecord(dropped, first, last uint64) []byte {
	d, _ := json.Marshal(map[string]uint64{"dropped": dropped, "first_offset": first, "last_offset": last})
	return encodeEvent("LogsDropped", "Warning", d)
}

// ReportRecovery appends an event describing damage found when the queue
// was opened. It appends nothing when there was none.
func ReportRecovery(ctx context.Context, q *Queue, rec Recovery) error {
	if len(rec.Damage) == 0 {
		return nil
	}
	d, _ := json.Marshal(rec.Damage)
	_, err := q.Append(ctx, [][]byte{encodeEvent("LogQueueDamaged", "Warning", d)})
	return err
}

func encodeEvent(typ, status string, details []byte) []byte {
	b, _ := proto.Marshal(&logs.Record{Body: &logs.Record_Event{Event: &cvms.AgentEvent{
		EventType: typ, Status: status, Originator: "logfwd", Details: details, Timestamp: timestamppb.Now(),
	}}})
	return b
}
