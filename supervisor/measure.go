package supervisor

// Measurement of the child table and of every child restart into the vTPM
// (PCR 15, see attest.MeasurePCR), through the attestation child, which is
// the only process holding the TPM.
//
// Hook for the supervisor core: Hooks.Measure is filled by the Measurer
// registered below (RegisterMeasurer). It is called on the supervisor loop
// and never blocks: events are queued with a boot id and a sequence number and
// delivered in order by one goroutine as control.Commands
// (proto/attestation.MeasureRequest) to the attestation child, retried until
// the child answers. The child applies each (boot id, seq) once, so a resend
// after the child restarted is harmless; the child persists its log, so the
// events survive its restarts.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
)

// AttestationChild is the child that owns the TPM.
const AttestationChild = "attestation"

func init() {
	RegisterMeasurer(func(s *Supervisor) func(ctx context.Context, kind string, data []byte) {
		m := NewMeasurer(func(ctx context.Context, body proto.Message) (proto.Message, error) {
			return s.Command(ctx, AttestationChild, body)
		}, s.Log())
		return m.Measure
	})
}

// SendFunc delivers a command body to the attestation child and returns its reply.
type SendFunc func(ctx context.Context, body proto.Message) (proto.Message, error)

// Measurer queues measurement events and delivers them to the attestation child.
type Measurer struct {
	bootID string
	send   SendFunc
	log    *slog.Logger
	wake   chan struct{}
	wg     sync.WaitGroup // the delivery goroutine

	mu      sync.Mutex
	seq     uint64                     // guarded by mu
	pending []*attestpb.MeasureRequest // guarded by mu; oldest first
	started bool                       // guarded by mu
	dropped int                        // guarded by mu
	applied uint64                     // guarded by mu; last seq acknowledged
}

// Measure kinds Hooks.Measure passes (MeasureTable, MeasureRestart) map to
// the events attest.EventChildTable and attest.EventChildStart.

// NewMeasurer returns a Measurer delivering with send. log may be nil.
func NewMeasurer(send SendFunc, log *slog.Logger) *Measurer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id := make([]byte, 8)
	rand.Read(id)
	return &Measurer{bootID: hex.EncodeToString(id), send: send, log: log.With("part", "measure"), wake: make(chan struct{}, 1)}
}

// Measure is the Hooks.Measure function. For MeasureTable, data is the
// table's canonical encoding (its SHA-256 is measured, = Table.Hash); for
// MeasureRestart, data is {"child","generation","computation_id"}. It never
// blocks. The first call starts the delivery goroutine, which ends with ctx:
// pass Run's context first (Run measures the table before anything else).
func (m *Measurer) Measure(ctx context.Context, kind string, data []byte) {
	var ev attest.Event
	var err error
	switch kind {
	case MeasureTable:
		sum := sha256.Sum256(data)
		ev, err = attest.JSONEvent(attest.EventChildTable, attest.ChildTable{SHA256: hex.EncodeToString(sum[:])})
	case MeasureRestart:
		var r struct {
			Child         string `json:"child"`
			Generation    uint32 `json:"generation"`
			ComputationID string `json:"computation_id"`
		}
		if err = json.Unmarshal(data, &r); err == nil {
			ev, err = attest.JSONEvent(attest.EventChildStart, attest.ChildStart{Child: r.Child, Generation: r.Generation, ComputationID: r.ComputationID})
		}
	case MeasureStorage:
		ev, err = storageEvent(data)
	default:
		err = fmt.Errorf("unknown measurement kind %q", kind)
	}
	if err != nil {
		m.log.Error("measurement not recorded", "kind", kind, "err", err)
		return
	}
	m.mu.Lock()
	if len(m.pending) >= attest.MaxEvents {
		m.dropped++
		m.mu.Unlock()
		m.log.Error("measurement queue full: event dropped (the attestation child is not taking events)", "kind", kind)
		return
	}
	m.seq++
	m.pending = append(m.pending, &attestpb.MeasureRequest{BootId: m.bootID, Seq: m.seq, Type: ev.Type, Data: ev.Data})
	start := !m.started
	m.started = true
	m.mu.Unlock()
	if start {
		m.wg.Go(func() { m.run(ctx) })
	}
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Wait returns once the delivery goroutine has ended (after the context of
// the first Measure call is done).
func (m *Measurer) Wait() { m.wg.Wait() }

// Pending reports how many events wait for the attestation child.
func (m *Measurer) Pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pending)
}

// run delivers pending events in order until ctx ends, backing off (50 ms
// doubling to 2 s) while the attestation child does not answer.
func (m *Measurer) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	failing := false
	for {
		m.mu.Lock()
		var next *attestpb.MeasureRequest
		if len(m.pending) > 0 {
			next = m.pending[0]
		}
		m.mu.Unlock()
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case <-m.wake:
				continue
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := m.send(cctx, next)
		cancel()
		if err == nil {
			m.mu.Lock()
			m.pending = m.pending[1:]
			m.applied = next.GetSeq()
			m.mu.Unlock()
			if failing {
				m.log.Info("measurements delivered again", "seq", next.GetSeq())
			}
			failing, backoff = false, 50*time.Millisecond
			continue
		}
		if !failing {
			m.log.Warn("attestation child did not take a measurement; retrying", "seq", next.GetSeq(), "type", next.GetType(), "err", err)
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// ExtendManifest extends PCR 16 with a computation manifest (Cocos §1.3),
// through the attestation child. manifestJSON must be the JSON the verifier
// will hash (Cocos: the JSON-marshalled computation).
func (s *Supervisor) ExtendManifest(ctx context.Context, manifestJSON []byte) error {
	if _, err := s.Command(ctx, AttestationChild, &attestpb.ExtendManifestRequest{ManifestJson: manifestJSON}); err != nil {
		return fmt.Errorf("supervisor: extending PCR 16 with the manifest: %w", err)
	}
	return nil
}
