package attest

import (
	"crypto/ecdsa"
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
	rw    io.ReadWriter // guarded by mu
	ak    *client.Key   // guarded by mu
	akPub []byte        // TPMT_PUBLIC encoding, immutable
	pub   *ecdsa.PublicKey
	banks map[tpm2.Algorithm]bool
	// EventLogPath is the firmware TCG event log read into every quote; ""
	// means none (the simulator). Set before the first Attest.
	EventLogPath string
}

// NewTPM creates (or recreates: it is deterministic) the attestation key on rw.
func NewTPM(rw io.ReadWriter) (*TPM, error) {
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
	return &TPM{rw: rw, ak: ak, akPub: pubArea, pub: pub, banks: banks}, nil
}

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
func (t *TPM) Extend(e Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch e.PCR {
	case MeasurePCR:
		if err := tpm2.PCREvent(t.rw, tpmutil.Handle(e.PCR), e.EventBytes()); err != nil {
			return fmt.Errorf("attest: extending PCR %d with %s event: %w", e.PCR, e.Type, err)
		}
	case ManifestPCR:
		if err := tpm2.PCRExtend(t.rw, tpmutil.Handle(e.PCR), tpm2.AlgSHA256, e.Data[:32], ""); err != nil {
			return fmt.Errorf("attest: extending PCR 16 (SHA-256 bank): %w", err)
		}
		if t.banks[tpm2.AlgSHA384] {
			if err := tpm2.PCRExtend(t.rw, tpmutil.Handle(e.PCR), tpm2.AlgSHA384, e.Data[32:], ""); err != nil {
				return fmt.Errorf("attest: extending PCR 16 (SHA-384 bank): %w", err)
			}
		}
	}
	return nil
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
