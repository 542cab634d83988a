package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/cvmd/cvmd/attest/sim"
)

// timeouts is a TPM transport that makes the writes of chosen commands
// fail as the kernel's command timeout does (ETIME), in front of the real
// TPM simulator. With ran, the command reaches the TPM and only its answer
// is lost (what a cancel that came too late looks like); without, it never
// reaches the TPM.
type timeouts struct {
	rw   io.ReadWriter
	mu   sync.Mutex
	left map[tpmutil.Command]int // how many more writes of each command time out
	ran  bool
	hit  int // writes that timed out
}

func (f *timeouts) failNext(cmd tpmutil.Command, n int, ran bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left[cmd], f.ran = n, ran
}

func (f *timeouts) Write(cmd []byte) (int, error) {
	f.mu.Lock()
	code := commandCode(cmd)
	fail := f.left[code] > 0
	if fail {
		f.left[code]--
		f.hit++
	}
	ran := f.ran
	f.mu.Unlock()
	if !fail {
		return f.rw.Write(cmd)
	}
	if ran {
		if _, err := f.rw.Write(cmd); err != nil {
			return 0, err
		}
		if _, err := f.rw.Read(make([]byte, 4096)); err != nil {
			return 0, err
		}
	}
	return 0, &os.PathError{Op: "write", Path: "/dev/tpmrm0", Err: syscall.ETIME}
}

func (f *timeouts) Read(p []byte) (int, error) { return f.rw.Read(p) }

// simTPM is a TPM on the simulator behind a timeouts transport, whose
// retries do not sleep.
func simTPM(t *testing.T) (*TPM, *timeouts) {
	t.Helper()
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	f := &timeouts{rw: rw, left: map[tpmutil.Command]int{}}
	tp, err := NewTPM(f)
	if err != nil {
		rw.Close()
		t.Fatal(err)
	}
	tp.retry.sleep = func(time.Duration) {}
	t.Cleanup(func() { tp.Close(); rw.Close() })
	return tp, f
}

func pcrValue(t *testing.T, tp *TPM, pcr int, alg tpm2.Algorithm) []byte {
	t.Helper()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	v, err := tpm2.ReadPCR(tp.rw, pcr, alg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A quote, a signature and a PCR read whose commands time out a few times
// (run or not) succeed, within the bound.
func TestTPMCommandTimeoutsAreRetried(t *testing.T) {
	for _, ran := range []bool{false, true} {
		t.Run(fmt.Sprintf("ran=%v", ran), func(t *testing.T) { testRetried(t, ran) })
	}
}

func testRetried(t *testing.T, ran bool) {
	{
		tp, f := simTPM(t)
		f.failNext(tpm2.CmdGetCapability, timeoutAttempts-1, ran)
		if _, err := tp.Attest([]byte("nonce"), nil, nil); err != nil {
			t.Fatalf("ran=%v: quote after %d timeouts of GetCapability: %v", ran, timeoutAttempts-1, err)
		}
		f.failNext(tpm2.CmdQuote, 2, ran)
		if _, err := tp.Attest([]byte("nonce"), nil, nil); err != nil {
			t.Fatalf("ran=%v: quote after 2 timeouts of Quote: %v", ran, err)
		}
		// A hash sequence step is never sent again: the sequence starts over.
		f.failNext(tpm2.CmdSequenceUpdate, 1, ran)
		tbs := bytes.Repeat([]byte("token "), 500) // > 1 KiB: one update at least
		sig, err := tp.Sign(tbs)
		if err != nil {
			t.Fatalf("ran=%v: sign after a timeout of SequenceUpdate: %v", ran, err)
		}
		d := sha256.Sum256(tbs)
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(tp.AKPublicKey(), d[:], r, s) {
			t.Fatalf("ran=%v: the signature made after a restarted sequence does not verify", ran)
		}
		if f.hit != timeoutAttempts-1+2+1 || tp.Retried() != int64(f.hit) {
			t.Fatalf("ran=%v: %d timeouts injected, %d retries counted", ran, f.hit, tp.Retried())
		}
		// Past the bound, the timeout is the error.
		f.failNext(tpm2.CmdPCRRead, timeoutAttempts, ran)
		if _, err := tp.ReadPCR(MeasurePCR); !isTPMTimeout(err) {
			t.Fatalf("ran=%v: %d timeouts of PCR_Read: err %v, want ETIME", ran, timeoutAttempts, err)
		}
	}
}

// An extend that timed out is checked against its PCR: extended exactly
// once whether the TPM ran the timed-out command or not, and never twice.
func TestTPMExtendTimeoutExtendsOnce(t *testing.T) {
	ev := Event{PCR: MeasurePCR, Type: EventChildStart, Data: []byte(`{"child":"runner"}`)}
	man := ManifestEvent([]byte(`{"id":"c1"}`))
	for _, ran := range []bool{false, true} {
		t.Run(fmt.Sprintf("ran=%v", ran), func(t *testing.T) { testExtendOnce(t, ran, ev, man) })
	}
}

func testExtendOnce(t *testing.T, ran bool, ev, man Event) {
	{
		tp, f := simTPM(t)
		before15 := pcrValue(t, tp, MeasurePCR, tpm2.AlgSHA256)
		d := sha256.Sum256(ev.EventBytes())
		want15 := sha256.Sum256(append(append([]byte{}, before15...), d[:]...))
		f.failNext(tpm2.CmdPCREvent, 1, ran)
		if err := tp.Extend(ev); err != nil {
			t.Fatalf("ran=%v: PCR 15 extend after a timeout: %v", ran, err)
		}
		if got := pcrValue(t, tp, MeasurePCR, tpm2.AlgSHA256); !bytes.Equal(got, want15[:]) {
			t.Fatalf("ran=%v: PCR 15 is %x, want it extended once: %x", ran, got, want15)
		}

		before256 := pcrValue(t, tp, ManifestPCR, tpm2.AlgSHA256)
		before384 := pcrValue(t, tp, ManifestPCR, tpm2.AlgSHA384)
		want256 := sha256.Sum256(append(append([]byte{}, before256...), man.Data[:32]...))
		want384 := sha512.Sum384(append(append([]byte{}, before384...), man.Data[32:]...))
		f.failNext(tpm2.CmdPCRExtend, 2, ran) // the SHA-256 bank's extend twice
		if err := tp.Extend(man); err != nil {
			t.Fatalf("ran=%v: PCR 16 extend after timeouts: %v", ran, err)
		}
		if got := pcrValue(t, tp, ManifestPCR, tpm2.AlgSHA256); !bytes.Equal(got, want256[:]) {
			t.Fatalf("ran=%v: PCR 16 SHA-256 is %x, want it extended once: %x", ran, got, want256)
		}
		if got := pcrValue(t, tp, ManifestPCR, tpm2.AlgSHA384); !bytes.Equal(got, want384[:]) {
			t.Fatalf("ran=%v: PCR 16 SHA-384 is %x, want it extended once: %x", ran, got, want384)
		}

		// An extend that never gets through fails with the timeout, the PCR
		// untouched.
		before := pcrValue(t, tp, MeasurePCR, tpm2.AlgSHA256)
		f.failNext(tpm2.CmdPCREvent, timeoutAttempts, false)
		if err := tp.Extend(ev); !isTPMTimeout(err) {
			t.Fatalf("ran=%v: extend after %d timeouts: err %v, want ETIME", ran, timeoutAttempts, err)
		}
		if got := pcrValue(t, tp, MeasurePCR, tpm2.AlgSHA256); !bytes.Equal(got, before) {
			t.Fatalf("ran=%v: a failed extend changed PCR 15", ran)
		}
	}
}

// The transport sends again only the commands that may run twice.
func TestRetrySafeCommands(t *testing.T) {
	for _, c := range []tpmutil.Command{tpm2.CmdPCRExtend, tpm2.CmdPCREvent, tpm2.CmdSequenceUpdate, tpm2.CmdSequenceComplete,
		tpm2.CmdWriteNV, tpm2.CmdIncrementNVCounter, tpm2.CmdPolicySecret, tpm2.CmdPolicyPCR, tpm2.CmdEventSequenceComplete} {
		if retrySafe[c] {
			t.Errorf("command %#x would be sent twice after a timeout", uint32(c))
		}
	}
	n := 0
	r := &retryTransport{rw: writeFunc(func([]byte) (int, error) {
		n++
		return 0, &os.PathError{Op: "write", Path: "/dev/tpmrm0", Err: syscall.ETIME}
	}), sleep: func(time.Duration) {}}
	cmd := []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x82} // PCR_Extend header
	if _, err := r.Write(cmd); !errors.Is(err, syscall.ETIME) || n != 1 {
		t.Fatalf("PCR_Extend: %d writes, err %v; want 1 and ETIME", n, err)
	}
	n = 0
	cmd[9] = 0x7A // GetCapability
	if _, err := r.Write(cmd); !errors.Is(err, syscall.ETIME) || n != timeoutAttempts {
		t.Fatalf("GetCapability: %d writes, err %v; want %d and ETIME", n, err, timeoutAttempts)
	}
}

type writeFunc func([]byte) (int, error)

func (w writeFunc) Write(p []byte) (int, error) { return w(p) }
func (w writeFunc) Read([]byte) (int, error)    { return 0, io.EOF }
