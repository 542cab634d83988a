package manager

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/cvms"
)

// stateTimeout bounds an agentStateReq answer.
const stateTimeout = 5 * time.Second

// maxPartials bounds how many chunked requests may be in progress at once.
const maxPartials = 4

func (l *Link) recvControl(ctx context.Context, ctl cvms.Service_ProcessClient) error {
	for {
		m, err := ctl.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("manager: control stream closed by the manager")
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("manager: control stream: %w", err)
		}
		if err := l.handle(ctx, m); err != nil {
			return err
		}
	}
}

// handle answers one server message. Only a disconnect ends the session;
// malformed messages are refused with a clear error and the link goes on.
func (l *Link) handle(ctx context.Context, m *cvms.ServerStreamMessage) error {
	switch b := m.GetMessage().(type) {
	case *cvms.ServerStreamMessage_RunReqChunks:
		c := b.RunReqChunks
		data, done, err := l.asm.add(c.GetId(), c.GetData(), c.GetIsLast())
		if err != nil {
			l.reject(err)
			l.runResponse(c.GetId(), err.Error())
			return nil
		}
		if !done {
			return nil
		}
		req := &cvms.ComputationRunReq{}
		if err := proto.Unmarshal(data, req); err != nil {
			err = fmt.Errorf("manager: runReqChunks %q: reassembled %d bytes are not a ComputationRunReq: %v", c.GetId(), len(data), err)
			l.reject(err)
			l.runResponse(c.GetId(), err.Error())
			return nil
		}
		if req.GetId() != c.GetId() && c.GetId() != "" {
			l.log.Warn("runReqChunks id differs from the manifest id", "chunks_id", c.GetId(), "manifest_id", req.GetId())
		}
		l.run(req)
	case *cvms.ServerStreamMessage_RunReq:
		l.run(b.RunReq)
	case *cvms.ServerStreamMessage_StopComputation:
		id := b.StopComputation.GetComputationId()
		l.do(func(ctx context.Context) {
			msg := ""
			if err := l.deps.Supervisor.Stop(ctx, id); err != nil {
				msg = err.Error()
				l.log.Warn("stopping computation", "id", id, "err", err)
			} else {
				l.mu.Lock()
				l.active = ""
				l.mu.Unlock()
			}
			l.enqueue(&cvms.ClientStreamMessage{Message: &cvms.ClientStreamMessage_StopComputationRes{
				StopComputationRes: &cvms.StopComputationResponse{ComputationId: id, Message: msg}}})
		})
	case *cvms.ServerStreamMessage_AgentStateReq:
		id := b.AgentStateReq.GetId()
		sctx, cancel := context.WithTimeout(ctx, stateTimeout)
		state, err := l.deps.Supervisor.State(sctx)
		cancel()
		if err != nil {
			l.log.Warn("agent state for the manager", "err", err)
			state = "Unknown"
		}
		l.enqueue(&cvms.ClientStreamMessage{Message: &cvms.ClientStreamMessage_AgentStateRes{
			AgentStateRes: &cvms.AgentStateRes{Id: id, State: state}}})
	case *cvms.ServerStreamMessage_DisconnectReq:
		return errDisconnect
	default:
		l.reject(fmt.Errorf("manager: message with no known content (unknown oneof field; %d unknown bytes)", len(m.ProtoReflect().GetUnknown())))
	}
	return nil
}

// do queues fn on the link's serial worker, so that Start and Stop never
// overlap and never block the receive loop.
func (l *Link) do(fn func(ctx context.Context)) {
	l.cmds <- fn
}

func (l *Link) runResponse(id, errText string) {
	l.enqueue(&cvms.ClientStreamMessage{Message: &cvms.ClientStreamMessage_RunRes{
		RunRes: &cvms.RunResponse{ComputationId: id, Error: errText}}})
}

// run validates a computation and starts it on the worker.
func (l *Link) run(req *cvms.ComputationRunReq) {
	if err := ValidateRunReq(req); err != nil {
		l.reject(err)
		l.runResponse(req.GetId(), err.Error())
		return
	}
	id := req.GetId()
	l.do(func(ctx context.Context) {
		l.mu.Lock()
		active := l.active
		l.mu.Unlock()
		switch {
		case active == id:
			// Re-delivery after a reconnect: already running; answer again.
			l.runResponse(id, "")
			return
		case active != "":
			err := fmt.Errorf("manager: computation %q refused: computation %q is active (send stopComputation first)", id, active)
			l.reject(err)
			l.runResponse(id, err.Error())
			return
		}
		if err := l.deps.Supervisor.Start(ctx, req); err != nil {
			l.log.Warn("starting computation", "id", id, "err", err)
			l.runResponse(id, err.Error())
			return
		}
		l.mu.Lock()
		l.active = id
		l.mu.Unlock()
		l.log.Info("computation started", "id", id, "name", req.GetName())
		l.runResponse(id, "")
	})
}

// ValidateRunReq checks what the guest needs from a manifest, naming the
// first field that is wrong.
func ValidateRunReq(r *cvms.ComputationRunReq) error {
	if r.GetId() == "" {
		return errors.New("manager: runReq: id is empty")
	}
	a := r.GetAlgorithm()
	if a == nil {
		return fmt.Errorf("manager: runReq %q: algorithm is missing", r.GetId())
	}
	// A pulled resource is checked against its hash as an uploaded one is.
	if len(a.GetHash()) != 32 {
		return fmt.Errorf("manager: runReq %q: algorithm.hash is %d bytes, want 32 (SHA3-256)", r.GetId(), len(a.GetHash()))
	}
	if err := checkKey(a.GetUserKey()); err != nil {
		return fmt.Errorf("manager: runReq %q: algorithm.userKey: %v", r.GetId(), err)
	}
	names := map[string]bool{}
	for i, d := range r.GetDatasets() {
		if len(d.GetHash()) != 32 {
			return fmt.Errorf("manager: runReq %q: datasets[%d].hash is %d bytes, want 32", r.GetId(), i, len(d.GetHash()))
		}
		// No filename is allowed (Cocos's test manager sends none): an
		// upload is matched by its hash, a pulled one named from its source.
		if names[d.GetFilename()] && d.GetFilename() != "" {
			return fmt.Errorf("manager: runReq %q: datasets[%d].filename %q repeats an earlier dataset", r.GetId(), i, d.GetFilename())
		}
		names[d.GetFilename()] = true
		if err := checkKey(d.GetUserKey()); err != nil {
			return fmt.Errorf("manager: runReq %q: datasets[%d].userKey: %v", r.GetId(), i, err)
		}
	}
	if len(r.GetResultConsumers()) == 0 {
		return fmt.Errorf("manager: runReq %q: result_consumers is empty", r.GetId())
	}
	for i, c := range r.GetResultConsumers() {
		if err := checkKey(c.GetUserKey()); err != nil {
			return fmt.Errorf("manager: runReq %q: result_consumers[%d].userKey: %v", r.GetId(), i, err)
		}
	}
	return nil
}

func checkKey(der []byte) error {
	if len(der) == 0 {
		return errors.New("empty")
	}
	if _, err := x509.ParsePKIXPublicKey(der); err != nil {
		return fmt.Errorf("not a PKIX public key: %v", err)
	}
	return nil
}

// assembler reassembles runReqChunks per id.
type assembler struct {
	max     int
	timeout time.Duration

	mu    sync.Mutex
	parts map[string]*partial // guarded by mu
}

type partial struct {
	data     []byte
	last     time.Time
	rejected bool // over the cap: ignore chunks until is_last
}

func newAssembler(max int, timeout time.Duration) *assembler {
	return &assembler{max: max, timeout: timeout, parts: map[string]*partial{}}
}

// add appends a chunk. It returns the whole request when isLast arrives.
func (a *assembler) add(id string, data []byte, isLast bool) ([]byte, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.parts[id]
	if p == nil {
		if len(a.parts) >= maxPartials {
			return nil, false, fmt.Errorf("manager: runReqChunks %q refused: %d chunked requests already in progress", id, maxPartials)
		}
		p = &partial{}
		a.parts[id] = p
	}
	p.last = time.Now()
	if p.rejected {
		if isLast {
			delete(a.parts, id)
		}
		return nil, false, nil
	}
	if len(p.data)+len(data) > a.max {
		size := len(p.data) + len(data)
		p.data, p.rejected = nil, true
		if isLast {
			delete(a.parts, id)
		}
		return nil, false, fmt.Errorf("manager: runReqChunks %q: request reaches %d bytes, over the %d-byte cap", id, size, a.max)
	}
	p.data = append(p.data, data...)
	if !isLast {
		return nil, false, nil
	}
	delete(a.parts, id)
	return p.data, true, nil
}

// expire drops partial requests idle for longer than the timeout and
// returns their ids and sizes.
func (a *assembler) expire(now time.Time) map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out map[string]int
	for id, p := range a.parts {
		if now.Sub(p.last) > a.timeout {
			if out == nil {
				out = map[string]int{}
			}
			if !p.rejected {
				out[id] = len(p.data)
			}
			delete(a.parts, id)
		}
	}
	return out
}

func (l *Link) sweepChunks(ctx context.Context) {
	t := time.NewTicker(min(time.Second, l.cfg.ChunkTimeout/4))
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			for id, n := range l.asm.expire(now) {
				err := fmt.Errorf("manager: runReqChunks %q: no chunk with is_last within %s; dropped %d bytes", id, l.cfg.ChunkTimeout, n)
				l.reject(err)
				l.runResponse(id, err.Error())
			}
		case <-ctx.Done():
			return
		}
	}
}
