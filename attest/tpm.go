package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/google/go-tpm-tools/client"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/cvmd/cvmd/attest/eat"
)

// maxTPMBuffer is MAX_DIGEST_BUFFER: the most one TPM2_SequenceUpdate takes.
const maxTPMBuffer = 1024

// TPM is the attestation child's handle on a TPM: an ECC P-256 attestation
// key (the TCG default AK template under the endorsement hierarchy, so the
// same TPM always yields the same AK) plus the operations cvmd needs. Its
// methods are safe for concurrent use; TPM commands are serialized.
type TPM struct {
	mu    sync.Mutex
	rw    io.ReadWriter // guarded by mu; retries timed-out commands (tpmretry.go)
	retry *retryTransport
	ak    *client.Key // guarded by mu
	akPub []byte      // TPMT_PUBLIC encoding, immutable
	pub   *ecdsa.PublicKey
	banks map[tpm2.Algorithm]bool
	// EventLogPath is the firmware TCG event log read into every quote; ""
	// means none (the simulator). Set before the first Attest.
	EventLogPath string
}

// NewTPM creates (or recreates: it is deterministic) the attestation key on rw.
func NewTPM(dev io.ReadWriter) (*TPM, error) {
	retry := newRetryTransport(dev)
	var rw io.ReadWriter = retry
	ak, err := client.AttestationKeyECC(rw)
	if err != nil {
		return nil, fmt.Errorf("attest: creating TPM attestation key: %w", err)
	}
	pubArea, err := ak.PublicArea().Encode()
	if err != nil {
		ak.Close()
		return nil, fmt.Errorf("attest: encoding AK public area: %w", err)
	}
	pub, ok := ak.PublicKey().(*ecdsa.PublicKey)
	if !ok {
		ak.Close()
		return nil, fmt.Errorf("attest: AK public key is %T, want ECDSA", ak.PublicKey())
	}
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		ak.Close()
		return nil, fmt.Errorf("attest: reading allocated PCR banks: %w", err)
	}
	banks := map[tpm2.Algorithm]bool{}
	for _, s := range sels {
		if len(s.PCRs) > 0 {
			banks[s.Hash] = true
		}
	}
	if !banks[tpm2.AlgSHA256] {
		ak.Close()
		return nil, errors.New("attest: TPM has no SHA-256 PCR bank")
	}
	return &TPM{rw: rw, retry: retry, ak: ak, akPub: pubArea, pub: pub, banks: banks}, nil
}

// Retried returns how many TPM commands were sent again after the
// kernel's command timeout (tpmretry.go).
func (t *TPM) Retried() int64 { return t.retry.retried.Load() }

// Close flushes the attestation key. It does not close rw.
func (t *TPM) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ak != nil {
		t.ak.Close()
		t.ak = nil
	}
}

// AKPub returns the AK's TPMT_PUBLIC encoding (attest.Attestation.ak_pub).
func (t *TPM) AKPub() []byte { return t.akPub }

// AKPublicKey returns the AK as a crypto key.
func (t *TPM) AKPublicKey() *ecdsa.PublicKey { return t.pub }

// Attest quotes every allocated PCR bank over nonce with the AK. If tee is
// not nil its report (over teeNonce) is added, as go-tpm-tools does.
func (t *TPM) Attest(nonce []byte, tee client.TEEDevice, teeNonce []byte) (*attestpb.Attestation, error) {
	opts := client.AttestOpts{Nonce: nonce, TCGEventLog: t.firmwareLog()}
	if tee == nil {
		opts.SkipTeeAttestation = true
	} else {
		opts.TEEDevice = tee
		opts.TEENonce = teeNonce
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ak == nil {
		return nil, errors.New("attest: TPM closed")
	}
	att, err := t.ak.Attest(opts)
	if err != nil {
		return nil, fmt.Errorf("attest: TPM quote: %w", err)
	}
	return att, nil
}

// firmwareLog reads the firmware event log; a missing log is an empty one
// (never nil: go-tpm-tools would read securityfs itself).
func (t *TPM) firmwareLog() []byte {
	if t.EventLogPath == "" {
		return []byte{}
	}
	b, err := os.ReadFile(t.EventLogPath)
	if err != nil {
		return []byte{}
	}
	return b
}

// Extend records e in the TPM: PCR 15 events through TPM2_PCR_Event (the TPM
// hashes EventBytes into every bank), manifest events through TPM2_PCR_Extend
// of their SHA3 digests into the SHA-256 and SHA-384 banks (as Cocos).
// An extend that timed out is never simply sent again (it may have run):
// extendChecked reads the PCR to tell.
func (t *TPM) Extend(e Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	pcr := tpmutil.Handle(e.PCR)
	switch e.PCR {
	case MeasurePCR:
		ev := e.EventBytes()
		d := sha256.Sum256(ev)
		if err := t.extendChecked(int(e.PCR), tpm2.AlgSHA256, d[:], func() error { return tpm2.PCREvent(t.rw, pcr, ev) }); err != nil {
			return fmt.Errorf("attest: extending PCR %d with %s event: %w", e.PCR, e.Type, err)
		}
	case ManifestPCR:
		if err := t.extendChecked(int(e.PCR), tpm2.AlgSHA256, e.Data[:32], func() error {
			return tpm2.PCRExtend(t.rw, pcr, tpm2.AlgSHA256, e.Data[:32], "")
		}); err != nil {
			return fmt.Errorf("attest: extending PCR 16 (SHA-256 bank): %w", err)
		}
		if t.banks[tpm2.AlgSHA384] {
			if err := t.extendChecked(int(e.PCR), tpm2.AlgSHA384, e.Data[32:], func() error {
				return tpm2.PCRExtend(t.rw, pcr, tpm2.AlgSHA384, e.Data[32:], "")
			}); err != nil {
				return fmt.Errorf("attest: extending PCR 16 (SHA-384 bank): %w", err)
			}
		}
	}
	return nil
}

// extendChecked runs extend, which takes bank alg of pcr from its value v
// to alg(v || digest). If extend times out, the PCR says whether it ran:
// at the new value it did (its answer was lost), at v it did not and it is
// sent again (timeoutAttempts in all), at any other value something else
// extended it meanwhile, which is an error. Called with t.mu held.
func (t *TPM) extendChecked(pcr int, alg tpm2.Algorithm, digest []byte, extend func() error) error {
	h, err := alg.Hash()
	if err != nil {
		return err
	}
	before, err := tpm2.ReadPCR(t.rw, pcr, alg)
	if err != nil {
		return fmt.Errorf("reading the PCR before the extend: %w", err)
	}
	hh := h.New()
	hh.Write(before)
	hh.Write(digest)
	want := hh.Sum(nil)
	wait := timeoutBackoff
	for attempt := 1; ; attempt++ {
		err := extend()
		if !isTPMTimeout(err) {
			return err
		}
		now, rerr := tpm2.ReadPCR(t.rw, pcr, alg)
		switch {
		case rerr != nil:
			return fmt.Errorf("%w (and reading the PCR after it: %v)", err, rerr)
		case bytes.Equal(now, want):
			t.retry.retried.Add(1)
			return nil
		case !bytes.Equal(now, before):
			return fmt.Errorf("%w, and PCR %d is neither its value before nor the extended one: extended by another", err, pcr)
		case attempt >= timeoutAttempts:
			return err
		}
		t.retry.sleep(wait)
		wait *= 2
		t.retry.retried.Add(1)
	}
}

// ReadPCR returns the SHA-256 bank value of pcr.
func (t *TPM) ReadPCR(pcr int) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, err := tpm2.ReadPCR(t.rw, pcr, tpm2.AlgSHA256)
	if err != nil {
		return nil, fmt.Errorf("attest: reading PCR %d: %w", pcr, err)
	}
	return v, nil
}

// Sign is an eat.Signer that signs with the AK. The AK is a restricted key,
// so the TPM must hash the data itself (a hash sequence, since tokens exceed
// one 1 KiB buffer) and hand back a ticket proving the data did not start
// with TPM_GENERATED_VALUE: that is what keeps a token signature from ever
// passing for a quote, and a quote for a token.
func (t *TPM) Sign(tbs []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ak == nil {
		return nil, errors.New("attest: TPM closed")
	}
	// A hash sequence step that timed out cannot be sent again (it may have
	// hashed its part): the sequence is dropped and started over.
	wait := timeoutBackoff
	for attempt := 1; ; attempt++ {
		sig, err := t.signOnce(tbs)
		if !isTPMTimeout(err) || attempt >= timeoutAttempts {
			return sig, err
		}
		t.retry.sleep(wait)
		wait *= 2
		t.retry.retried.Add(1)
	}
}

// signOnce hashes tbs in a TPM hash sequence and signs the digest with the
// AK. Called with t.mu held.
func (t *TPM) signOnce(tbs []byte) ([]byte, error) {
	seq, err := tpm2.HashSequenceStart(t.rw, "", tpm2.AlgSHA256)
	if err != nil {
		return nil, fmt.Errorf("attest: TPM hash sequence: %w", err)
	}
	rest := tbs
	for len(rest) > maxTPMBuffer {
		if err := tpm2.SequenceUpdate(t.rw, "", seq, rest[:maxTPMBuffer]); err != nil {
			tpm2.FlushContext(t.rw, seq)
			return nil, fmt.Errorf("attest: TPM hash sequence update: %w", err)
		}
		rest = rest[maxTPMBuffer:]
	}
	digest, ticket, err := tpm2.SequenceComplete(t.rw, "", seq, tpm2.HandleOwner, rest)
	if err != nil {
		tpm2.FlushContext(t.rw, seq) // gone if it completed; refused then
		return nil, fmt.Errorf("attest: TPM hash sequence complete: %w", err)
	}
	sig, err := tpm2.Sign(t.rw, t.ak.Handle(), "", digest, ticket, nil)
	if err != nil {
		return nil, fmt.Errorf("attest: TPM sign with AK: %w", err)
	}
	if sig.ECC == nil {
		return nil, fmt.Errorf("attest: AK signature algorithm %v, want ECDSA", sig.Alg)
	}
	return eat.RawSignature(sig.ECC.R, sig.ECC.S), nil
}

// ReadNV reads a whole NV index with its own (empty) authorization, or the
// owner's (empty) if the index does not allow that: Azure's HCL report index
// is readable either way, depending on the paravisor's version.
func (t *TPM) ReadNV(index uint32) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, err := tpm2.NVReadEx(t.rw, tpmutil.Handle(index), tpmutil.Handle(index), "", 0)
	if err != nil {
		var err2 error
		if b, err2 = tpm2.NVReadEx(t.rw, tpmutil.Handle(index), tpm2.HandleOwner, "", 0); err2 != nil {
			return nil, fmt.Errorf("attest: reading NV index %#x: %w", index, err)
		}
	}
	return b, nil
}

// WriteNV writes data at the start of NV index with the owner's (empty)
// authorization, 1 KiB at a time. With define, an index that is absent or
// of another size is (re)defined first with data's size, owner read and
// write, as Cocos defines the HCL's user-data index. (Writing the same
// bytes again is harmless, so the retried transport may repeat a write.)
func (t *TPM) WriteNV(index uint32, data []byte, define bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := tpmutil.Handle(index)
	if define {
		pub, err := tpm2.NVReadPublic(t.rw, h)
		if err == nil && int(pub.DataSize) != len(data) {
			if err := tpm2.NVUndefineSpace(t.rw, "", tpm2.HandleOwner, h); err != nil {
				return fmt.Errorf("attest: undefining NV index %#x (%d bytes, want %d): %w", index, pub.DataSize, len(data), err)
			}
		}
		if err != nil || int(pub.DataSize) != len(data) {
			attrs := tpm2.AttrOwnerWrite | tpm2.AttrOwnerRead
			if err := tpm2.NVDefineSpace(t.rw, tpm2.HandleOwner, h, "", "", nil, attrs, uint16(len(data))); err != nil {
				return fmt.Errorf("attest: defining NV index %#x (%d bytes): %w", index, len(data), err)
			}
		}
	}
	for off := 0; off < len(data); off += maxTPMBuffer {
		end := min(off+maxTPMBuffer, len(data))
		if err := tpm2.NVWrite(t.rw, tpm2.HandleOwner, h, "", data[off:end], uint16(off)); err != nil {
			return fmt.Errorf("attest: writing NV index %#x: %w", index, err)
		}
	}
	return nil
}

// CertifyAK has the key at signer (a persistent handle, e.g. Azure's AK)
// certify this TPM's attestation key: a TPMS_ATTEST naming the AK, over
// qualifyingData, and the signer's signature (TPMT_SIGNATURE). It proves
// the AK lives in the TPM the signer key belongs to.
func (t *TPM) CertifyAK(signer uint32, qualifyingData []byte) (attestation, signature []byte, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ak == nil {
		return nil, nil, errors.New("attest: TPM closed")
	}
	a, sig, err := tpm2.Certify(t.rw, "", "", t.ak.Handle(), tpmutil.Handle(signer), qualifyingData)
	if err != nil {
		return nil, nil, fmt.Errorf("attest: certifying the AK with key %#x: %w", signer, err)
	}
	return a, sig, nil
}
