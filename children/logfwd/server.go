package logfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/logs"
)

// Server implements logs.CollectorServer over a Queue.
type Server struct {
	logs.UnimplementedCollectorServer
	Q *Queue
	// Done, when set, ends every Read stream once it is done (readers hold
	// nothing that could be lost; pushes are let finish).
	Done context.Context
}

type pendingAck struct {
	seq  uint64
	done <-chan appendRes
}

// Push appends each batch and acknowledges it, in order, once it is on disk.
// Batches are pipelined: the next one is read while the previous one syncs.
func (s *Server) Push(st logs.Collector_PushServer) error {
	ctx := st.Context()
	order := &Stream{}
	acks := make(chan pendingAck, 16)
	var recvErr error
	var wg sync.WaitGroup
	// On an error return, the receiving goroutine ends when grpc cancels
	// the stream right after Push returns; on a clean end it has ended.
	wg.Go(func() {
		defer close(acks)
		for {
			b, err := st.Recv()
			if err != nil {
				recvErr = err
				return
			}
			payloads, err := batchPayloads(b)
			var p pendingAck
			if err != nil {
				ch := make(chan appendRes, 1)
				ch <- appendRes{err: err}
				p = pendingAck{seq: b.GetSeq(), done: ch}
			} else if len(payloads) == 0 {
				ch := make(chan appendRes, 1)
				ch <- appendRes{}
				p = pendingAck{seq: b.GetSeq(), done: ch}
			} else {
				p = pendingAck{seq: b.GetSeq(), done: s.Q.AppendOn(ctx, order, payloads)}
			}
			select {
			case acks <- p:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return // nothing after a refused batch may be stored
			}
		}
	})
	for p := range acks {
		var res appendRes
		select {
		case res = <-p.done:
		case <-ctx.Done():
			// The client went away: nothing more is acknowledged; what
			// was handed to the queue may still be stored (it resends).
			return status.FromContextError(ctx.Err()).Err()
		}
		if res.err != nil {
			var inv *invalidBatch
			if errors.As(res.err, &inv) {
				return status.Error(codes.InvalidArgument, inv.Error())
			}
			// Nothing of this batch or later ones was acknowledged: the
			// client sends them again on a new stream.
			return status.Errorf(codes.Unavailable, "logfwd: batch %d not stored: %v", p.seq, res.err)
		}
		if err := st.Send(&logs.Ack{Seq: p.seq}); err != nil {
			return err
		}
	}
	wg.Wait()
	if recvErr != nil && !errors.Is(recvErr, io.EOF) {
		return recvErr
	}
	return nil
}

func batchPayloads(b *logs.Batch) ([][]byte, error) {
	out := make([][]byte, 0, len(b.GetRaw())+len(b.GetRecords()))
	for i, r := range b.GetRaw() {
		if len(r) > maxPayload {
			return nil, &invalidBatch{fmt.Sprintf("logfwd: batch %d: raw record %d is %d bytes, over %d", b.GetSeq(), i, len(r), maxPayload)}
		}
		out = append(out, r)
	}
	for i, r := range b.GetRecords() {
		p, err := proto.Marshal(r)
		if err != nil || len(p) > maxPayload {
			return nil, &invalidBatch{fmt.Sprintf("logfwd: batch %d: record %d not storable (%d bytes): %v", b.GetSeq(), i, len(p), err)}
		}
		out = append(out, p)
	}
	return out, nil
}

// Read streams the queue from req.After (0: after the last commit), waiting
// for new records, until the client goes away.
func (s *Server) Read(req *logs.ReadRequest, st logs.Collector_ReadServer) error {
	r := s.Q.NewReader(req.GetAfter())
	defer r.Close()
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	if s.Done != nil {
		stop := context.AfterFunc(s.Done, cancel)
		defer stop()
	}
	for {
		ents, err := r.Next(ctx, 1024, 1<<20)
		if err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return nil
			}
			return status.Errorf(codes.Internal, "logfwd: reading queue: %v", err)
		}
		msg := &logs.Entries{Entries: make([]*logs.Entry, len(ents))}
		for i, e := range ents {
			msg.Entries[i] = &logs.Entry{Offset: e.Offset, Raw: e.Payload}
		}
		if err := st.Send(msg); err != nil {
			return err
		}
	}
}

// Commit deletes what the manager has received.
func (s *Server) Commit(_ context.Context, req *logs.CommitRequest) (*logs.CommitResponse, error) {
	if err := s.Q.Commit(req.GetThrough()); err != nil {
		return nil, status.Errorf(codes.Internal, "logfwd: commit through %d: %v", req.GetThrough(), err)
	}
	return &logs.CommitResponse{}, nil
}
