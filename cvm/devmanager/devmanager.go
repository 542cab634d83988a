// Package devmanager is a development CVMS server: the counterpart of Cocos's
// test/cvms server, written only from our copy of cvms.proto. It accepts the
// guest's Process streams, tells the control stream from the log stream by
// metadata (job-id, connection-type: log-forwarder) as Cocos's manager does,
// sends one computation (chunked like Cocos's server helper, or as a single
// runReq), prints what the guest sends, and sends state, stop and disconnect
// requests on demand.
//
// It is for development and tests: it keeps no state on disk, manages no
// VMs and serves any number of guests with the same computation. Imported by
// cli (the `cvm manager` command) and tests; it imports proto only.
package devmanager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/cvms"
)

// Options configure a Server. Computation may be nil (nothing is sent).
type Options struct {
	Computation *cvms.ComputationRunReq
	// ChunkSize is the runReqChunks data size. 0 = 1 MiB (Cocos's).
	ChunkSize int
	// Unchunked sends a single runReq instead of runReqChunks.
	Unchunked bool
	// Out receives one line per message from the guest; nil = discard.
	Out io.Writer
	// JSON makes Out lines JSON objects instead of text.
	JSON bool
	// Keep is how many received messages Messages keeps. 0 = 100 000.
	Keep int
}

// Received is one message from the guest.
type Received struct {
	Stream string // "control" or "log"
	JobID  string
	At     time.Time
	Msg    *cvms.ClientStreamMessage
}

// Server implements cvms.ServiceServer.
type Server struct {
	cvms.UnimplementedServiceServer
	opts Options

	mu        sync.Mutex
	control   *ctlStream    // guarded by mu; the newest control stream
	sentRun   bool          // guarded by mu
	runSentAt time.Time     // guarded by mu; when the computation was last sent
	msgs      []Received    // guarded by mu
	changed   chan struct{} // guarded by mu
	streams   int           // guarded by mu; control + log streams opened
	outMu     sync.Mutex
}

type ctlStream struct {
	mu sync.Mutex
	st cvms.Service_ProcessServer
}

func (c *ctlStream) send(m *cvms.ServerStreamMessage) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Send(m)
}

// New returns a Server.
func New(opts Options) *Server {
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 1 << 20
	}
	if opts.Keep <= 0 {
		opts.Keep = 100000
	}
	return &Server{opts: opts, changed: make(chan struct{})}
}

// Serve serves s on ln until ctx ends (creds nil = plaintext).
func Serve(ctx context.Context, ln net.Listener, s *Server, creds credentials.TransportCredentials) error {
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	g := grpc.NewServer(opts...)
	cvms.RegisterServiceServer(g, s)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	g.Stop()
	<-errc
	return nil
}

// Process is one guest stream.
func (s *Server) Process(st cvms.Service_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(st.Context())
	job := first(md.Get("job-id"))
	kind := "control"
	if first(md.Get("connection-type")) == "log-forwarder" {
		kind = "log"
	}
	s.mu.Lock()
	s.streams++
	s.mu.Unlock()
	s.printf("stream %s opened (job-id %q)", kind, job)
	if kind == "control" {
		c := &ctlStream{st: st}
		s.mu.Lock()
		s.control = c
		send := !s.sentRun && s.opts.Computation != nil
		s.sentRun = s.sentRun || send
		s.mu.Unlock()
		if send {
			if err := s.sendRun(c); err != nil {
				return err
			}
		}
	}
	for {
		m, err := st.Recv()
		if err != nil {
			s.printf("stream %s closed: %v", kind, err)
			s.mu.Lock()
			if kind == "control" && s.control != nil && s.control.st == st {
				s.control = nil
			}
			s.mu.Unlock()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		s.record(Received{Stream: kind, JobID: job, At: time.Now(), Msg: m})
	}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func (s *Server) sendRun(c *ctlStream) error {
	req := s.opts.Computation
	s.mu.Lock()
	s.runSentAt = time.Now()
	s.mu.Unlock()
	if s.opts.Unchunked {
		return c.send(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReq{RunReq: req}})
	}
	return SendChunked(c.send, req, s.opts.ChunkSize)
}

// SendChunked sends req the way Cocos's server helper does: the encoded
// request in chunks of size bytes with is_last false, then an empty chunk
// with is_last true.
func SendChunked(send func(*cvms.ServerStreamMessage) error, req *cvms.ComputationRunReq, size int) error {
	b, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("devmanager: encoding computation: %w", err)
	}
	for i := 0; i < len(b); i += size {
		chunk := b[i:min(i+size, len(b))]
		if err := send(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReqChunks{
			RunReqChunks: &cvms.RunReqChunks{Id: req.GetId(), Data: chunk}}}); err != nil {
			return fmt.Errorf("devmanager: sending runReqChunks: %w", err)
		}
	}
	return send(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_RunReqChunks{
		RunReqChunks: &cvms.RunReqChunks{Id: req.GetId(), IsLast: true}}})
}

// SendControl sends m on the newest control stream.
func (s *Server) SendControl(m *cvms.ServerStreamMessage) error {
	s.mu.Lock()
	c := s.control
	s.mu.Unlock()
	if c == nil {
		return errors.New("devmanager: no guest connected")
	}
	return c.send(m)
}

// Command runs one text command: state, stop [id], disconnect, run.
func (s *Server) Command(line string) error {
	f := strings.Fields(line)
	if len(f) == 0 {
		return nil
	}
	id := ""
	if s.opts.Computation != nil {
		id = s.opts.Computation.GetId()
	}
	if len(f) > 1 {
		id = f[1]
	}
	switch f[0] {
	case "state":
		return s.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_AgentStateReq{AgentStateReq: &cvms.AgentStateReq{Id: id}}})
	case "stop":
		return s.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_StopComputation{StopComputation: &cvms.StopComputation{ComputationId: id}}})
	case "disconnect":
		return s.SendControl(&cvms.ServerStreamMessage{Message: &cvms.ServerStreamMessage_DisconnectReq{DisconnectReq: &cvms.DisconnectReq{Id: id}}})
	case "run":
		s.mu.Lock()
		c := s.control
		s.mu.Unlock()
		if c == nil || s.opts.Computation == nil {
			return errors.New("devmanager: no guest connected or no computation")
		}
		return s.sendRun(c)
	default:
		return fmt.Errorf("devmanager: unknown command %q (want state, stop [id], disconnect, run)", f[0])
	}
}

// record writes r's line to Out, then adds r to the messages and wakes the
// waiters: a Wait that sees r finds its line written. outMu is held across
// both so that Out's order is the messages' order.
func (s *Server) record(r Received) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	switch {
	case s.opts.Out == nil:
	case s.opts.JSON:
		body, _ := protojson.Marshal(r.Msg)
		line, _ := json.Marshal(map[string]any{"stream": r.Stream, "job_id": r.JobID, "time": r.At.Format(time.RFC3339Nano), "message": json.RawMessage(body)})
		fmt.Fprintf(s.opts.Out, "%s\n", line)
	default:
		fmt.Fprintln(s.opts.Out, Format(r.Msg))
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, r)
	if len(s.msgs) > s.opts.Keep {
		s.msgs = s.msgs[len(s.msgs)-s.opts.Keep:]
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *Server) printf(format string, args ...any) {
	if s.opts.Out == nil || s.opts.JSON {
		return
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.opts.Out, "manager: "+format+"\n", args...)
}

// Format renders a guest message as one human-readable line.
func Format(m *cvms.ClientStreamMessage) string {
	switch b := m.GetMessage().(type) {
	case *cvms.ClientStreamMessage_AgentLog:
		l := b.AgentLog
		return fmt.Sprintf("log   %-5s %s [%s] %s", l.GetLevel(), ts(l.GetTimestamp().AsTime()), l.GetComputationId(), l.GetMessage())
	case *cvms.ClientStreamMessage_AgentEvent:
		e := b.AgentEvent
		return fmt.Sprintf("event %s %s/%s %s (%s) %s", ts(e.GetTimestamp().AsTime()), e.GetOriginator(), e.GetEventType(), e.GetStatus(), e.GetComputationId(), e.GetDetails())
	case *cvms.ClientStreamMessage_RunRes:
		return fmt.Sprintf("run_res computation %q error %q", b.RunRes.GetComputationId(), b.RunRes.GetError())
	case *cvms.ClientStreamMessage_StopComputationRes:
		return fmt.Sprintf("stop_res computation %q message %q", b.StopComputationRes.GetComputationId(), b.StopComputationRes.GetMessage())
	case *cvms.ClientStreamMessage_AgentStateRes:
		return fmt.Sprintf("state_res id %q state %q", b.AgentStateRes.GetId(), b.AgentStateRes.GetState())
	case *cvms.ClientStreamMessage_VTPMattestationReport:
		return fmt.Sprintf("attestation_report %d bytes, cert serial %q", len(b.VTPMattestationReport.GetFile()), b.VTPMattestationReport.GetCertSerialNumber())
	case *cvms.ClientStreamMessage_AzureAttestationToken:
		return fmt.Sprintf("azure_token %d bytes", len(b.AzureAttestationToken.GetFile()))
	default:
		return fmt.Sprintf("unknown message %v", m)
	}
}

func ts(t time.Time) string { return t.UTC().Format("15:04:05.000") }

// Messages returns a copy of what was received so far.
func (s *Server) Messages() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.msgs...)
}

// RunSentAt returns when the computation was last sent (zero if never).
func (s *Server) RunSentAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runSentAt
}

// Streams returns how many streams guests opened.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// Wait waits until cond holds over the received messages, or ctx ends.
func (s *Server) Wait(ctx context.Context, cond func([]Received) bool) error {
	for {
		s.mu.Lock()
		msgs := s.msgs[:len(s.msgs):len(s.msgs)]
		ch := s.changed
		s.mu.Unlock()
		// cond runs unlocked: it may call Messages.
		if cond(msgs) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
