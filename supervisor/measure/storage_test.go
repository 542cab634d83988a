package measure

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/children/attestation"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
)

// The storage measurement (made right after the table) reaches PCR 15 as a
// storage event that a verifier's policy can require.
func TestMeasurerRecordsStorage(t *testing.T) {
	svc, err := attestation.New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	m := New(func(ctx context.Context, body proto.Message) (proto.Message, error) {
		return svc.Measure(body.(*attestpb.MeasureRequest))
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer m.Wait()
	defer cancel()
	st := attest.Storage{Kind: attest.StorageDisk, FS: "ext4", SizeBytes: 6 << 30, Disk: "vda", Serial: "cvmd-scratch",
		Cipher: "capi:gcm(aes)-random", KeyBits: 256, Integrity: "aead", Journal: "D", TagBytes: 28, SectorBytes: 4096}
	m.Table(ctx, []byte(`{"children":["x"]}`))
	fact, _ := json.Marshal(st)
	m.Storage(ctx, fact)
	m.Storage(ctx, []byte(`{"kind":"disk","unknown":1}`)) // refused: not what a verifier reads
	for deadline := time.Now().Add(10 * time.Second); m.Pending() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d events still pending", m.Pending())
		}
	}
	tok, err := svc.Attester().Attest(attest.Request{Nonce: []byte("12345678"), Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	ak, err := akPinFromToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	r, err := verify.Token(tok, verify.Options{AllowSimulated: true, Policy: &verify.Policy{CVMD: verify.CVMDPolicy{
		TrustedAKSHA256: []string{ak}, Storage: attest.StorageDisk}}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Storage == nil || *r.Storage != st {
		t.Fatalf("measured storage %+v, want %+v", r.Storage, st)
	}
}
