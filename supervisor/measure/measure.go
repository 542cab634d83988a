// Package measure records what the supervisor does in the vTPM, through
// the attestation child, which alone holds the TPM: the boot id and the
// child table's hash at boot and every child restart (PCR 15, see attest.MeasurePCR, as
// attest.EventChildTable and attest.EventChildStart events), and each
// computation's manifest (PCR 16, as Cocos does).
//
// Table and Restart are called on the supervisor's event loop and never
// block: events are queued with a boot id and a sequence number and
// delivered in order by one goroutine as control.Commands
// (proto/attestation.MeasureRequest) to the attestation child, retried until
// the child answers. The child applies each (boot id, seq) once, so a resend
// after the child restarted is harmless; the child persists its log, so the
// events survive its restarts. Manifest waits for the child's answer.
//
// measure imports attest (the event formats), cocos/manifest and proto; it
// does not know how commands reach the child (a SendFunc does). Only the
// supervisor's composition (package supervisor) imports it.
package measure

import (
	"bytes"
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
	// delivered is closed (and replaced) whenever applied moves: Flush
	// waits on it.
	delivered chan struct{} // guarded by mu
}

// New returns a Measurer delivering with send. log may be nil.
func New(send SendFunc, log *slog.Logger) *Measurer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id := make([]byte, 8)
	rand.Read(id) // crypto/rand.Read never fails (Go 1.24)
	return &Measurer{bootID: hex.EncodeToString(id), send: send, log: log.With("part", "measure"), wake: make(chan struct{}, 1), delivered: make(chan struct{})}
}

// Table queues the measurement of the child table, whose canonical
// encoding is canonical (its SHA-256, = table.Table.Hash, is measured). It
// never blocks. The first call starts the delivery goroutine, which ends
// with ctx: the supervisor passes Run's context, and measures the table
// before anything else.
func (m *Measurer) Table(ctx context.Context, canonical []byte) {
	// The boot id first: tokens name the boot of their log (x-cvmd-boot-id).
	boot, err := attest.JSONEvent(attest.EventBoot, attest.Boot{BootID: m.bootID})
	m.queue(ctx, "boot", boot, err)
	sum := sha256.Sum256(canonical)
	ev, err := attest.JSONEvent(attest.EventChildTable, attest.ChildTable{SHA256: hex.EncodeToString(sum[:])})
	m.queue(ctx, "table", ev, err)
}

// Restart queues the measurement of a child's start as generation gen
// (2 and up: a restart) during computation computationID ("" for none).
// It never blocks.
func (m *Measurer) Restart(ctx context.Context, child string, gen uint32, computationID string) {
	ev, err := attest.JSONEvent(attest.EventChildStart, attest.ChildStart{Child: child, Generation: gen, ComputationID: computationID})
	m.queue(ctx, "restart", ev, err)
}

// Storage queues the measurement of where the computation's files live:
// fact is pid1.Storage's JSON (the encrypted scratch disk, or memory),
// read strictly as attest.Storage, which the supervisor measures right
// after the table. It never blocks.
func (m *Measurer) Storage(ctx context.Context, fact []byte) {
	var st attest.Storage
	dec := json.NewDecoder(bytes.NewReader(fact))
	dec.DisallowUnknownFields()
	err := dec.Decode(&st)
	var ev attest.Event
	if err == nil {
		ev, err = attest.JSONEvent(attest.EventStorage, st)
	}
	m.queue(ctx, "storage", ev, err)
}

func (m *Measurer) queue(ctx context.Context, kind string, ev attest.Event, err error) {
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

// Flush waits until every event queued before it was called has reached
// the attestation child, or ctx ends. Evidence made after it includes them
// (a computation's manifest goes into PCR 16 only after the boot, the
// table and the storage are in the log: a verifier asking during the
// computation sees all of them).
func (m *Measurer) Flush(ctx context.Context) error {
	m.mu.Lock()
	want := m.seq
	for m.applied < want {
		ch, left := m.delivered, len(m.pending)
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("measure: %d measurements not yet taken by the attestation child: %w", left, context.Cause(ctx))
		case <-ch:
		}
		m.mu.Lock()
	}
	m.mu.Unlock()
	return nil
}

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
			close(m.delivered)
			m.delivered = make(chan struct{})
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
