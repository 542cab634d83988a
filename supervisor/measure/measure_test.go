package measure

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
