package measure

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	attesttpm "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/children/attestation"
	"github.com/cvmd/cvmd/internal/testutil"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/cvms"
)

// TestMeasurerDeliversInOrder drives the Measurer against the real
// attestation service (simulated TPM), with the child "not running" for the
// first attempts, and checks the token it then produces replays to PCR 15
// with the table hash and restarts the supervisor measured.
func TestMeasurerDeliversInOrder(t *testing.T) {
	svc, err := attestation.New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	var calls atomic.Int32
	send := func(ctx context.Context, body proto.Message) (proto.Message, error) {
		if calls.Add(1) <= 3 {
			return nil, errors.New("supervisor: command to attestation: not running")
		}
		return svc.Measure(body.(*attestpb.MeasureRequest))
	}
	m := New(send, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer m.Wait() // the delivery goroutine ends with ctx
	defer cancel()
	table := []byte(`{"children":["x"]}`)
	m.Table(ctx, table)
	m.Restart(context.Background(), "agent", 2, "c1")
	m.Restart(context.Background(), "agent", 3, "c1")
	testutil.WaitUntil(t, 10*time.Second, "every event delivered", func() bool { return m.Pending() == 0 })
	sum := sha256.Sum256(table)
	tok, err := svc.Attester().Attest(attest.Request{Nonce: []byte("12345678"), Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	// vTPM-only evidence needs a pinned AK: take it from the token itself
	// (this test checks the log, not AK trust).
	c, err := akPinFromToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	r, err := verify.Token(tok, verify.Options{AllowSimulated: true, Policy: &verify.Policy{CVMD: verify.CVMDPolicy{
		TrustedAKSHA256: []string{c}, ChildTableSHA256: hex.EncodeToString(sum[:]),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// platform, boot, child-table, two child-starts; the token names the boot.
	if len(r.Events) != 5 || r.Restarts["agent"] != 3 || r.BootID == "" || r.BootID != r.Events.BootID() {
		t.Fatalf("events %+v restarts %v boot %q", r.Events, r.Restarts, r.BootID)
	}
}

func akPinFromToken(tok []byte) (string, error) {
	_, c, err := eat.Decode(tok)
	if err != nil {
		return "", err
	}
	var att attesttpm.Attestation
	if err := proto.Unmarshal(c.RawReport, &att); err != nil {
		return "", err
	}
	s := sha256.Sum256(att.GetAkPub())
	return hex.EncodeToString(s[:]), nil
}

// TestManifestAfterQueuedMeasurements: a computation's manifest reaches
// PCR 16 only after the measurements queued before it (the boot's storage
// and table) were taken, even while the attestation child is still
// starting; evidence made once Manifest returns has them all. Flush gives
// up at its context's end, naming what is still waiting.
func TestManifestAfterQueuedMeasurements(t *testing.T) {
	svc, err := attestation.New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	var up atomic.Bool // the child "not running" until the test says
	var (
		orderMu sync.Mutex
		order   []string // guarded by orderMu
	)
	send := func(ctx context.Context, body proto.Message) (proto.Message, error) {
		if !up.Load() {
			return nil, errors.New("supervisor: command to attestation: not running")
		}
		orderMu.Lock()
		defer orderMu.Unlock()
		switch b := body.(type) {
		case *attestpb.MeasureRequest:
			order = append(order, b.GetType())
			return svc.Measure(b)
		case *attestpb.ExtendManifestRequest:
			order = append(order, "manifest")
			return svc.ExtendManifest(ctx, b)
		}
		return nil, errors.New("unexpected command")
	}
	m := New(send, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer m.Wait()
	defer cancel()
	m.Storage(ctx, []byte(`{"kind":"memory","reason":"no scratch disk"}`))
	m.Table(ctx, []byte(`{"children":["x"]}`))

	queued := m.Pending() // the boot's own event, the storage, the table
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := m.Flush(short); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d measurements not yet taken", queued)) {
		t.Fatalf("Flush with the child down: %v, want it to name the %d waiting", err, queued)
	}

	up.Store(true)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	req := &cvms.ComputationRunReq{Id: "c1", Algorithm: &cvms.Algorithm{Hash: make([]byte, 32), UserKey: der, AlgoType: "bin"},
		ResultConsumers: []*cvms.ResultConsumer{{UserKey: der}}}
	if err := m.Manifest(ctx, req); err != nil {
		t.Fatal(err)
	}
	orderMu.Lock()
	got := strings.Join(order, ",")
	orderMu.Unlock()
	if !strings.HasSuffix(got, ",manifest") || strings.Count(got, "manifest") != 1 || len(order) != queued+1 {
		t.Fatalf("delivery order %s: want the %d queued events, then the manifest", got, queued)
	}
	if m.Pending() != 0 {
		t.Fatalf("%d measurements still pending after Manifest", m.Pending())
	}
}
