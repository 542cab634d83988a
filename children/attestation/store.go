package attestation

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/fxamacker/cbor/v2"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/strictcbor"
)

// LogFile is the measurement log's name in the state dir.
const LogFile = "measurements.log"

// store is the measurement log, persisted as records (4-byte big-endian
// length ‖ CBOR event), each appended and fsynced before its PCR extension:
// a crash leaves at most one logged-but-not-extended event, which start-up
// repairs (see recover).
type store struct {
	mu   sync.Mutex
	f    *os.File        // guarded by mu; nil = memory only
	log  attest.EventLog // guarded by mu
	path string
}

// openStore loads dir/LogFile ("" dir = memory only). A torn last record
// (crash mid-write) is cut off.
func openStore(dir string) (*store, error) {
	s := &store{}
	if dir == "" {
		return s, nil
	}
	s.path = filepath.Join(dir, LogFile)
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening measurement log: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading measurement log: %w", err)
	}
	good := 0
	for rest := data; len(rest) >= 4; {
		n := int(binary.BigEndian.Uint32(rest))
		if n > attest.MaxEventData+256 || len(rest) < 4+n {
			break
		}
		var e attest.Event
		if err := strictcbor.Unmarshal(rest[4:4+n], &e); err != nil || e.Validate() != nil {
			break
		}
		s.log = append(s.log, e)
		rest = rest[4+n:]
		good += 4 + n
	}
	if good != len(data) {
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, fmt.Errorf("cutting torn measurement log record: %w", err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s.f = f
	return s, nil
}

// append persists e (fsync) and adds it to the log.
func (s *store) append(e attest.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.log) >= attest.MaxEvents {
		return fmt.Errorf("measurement log is full (%d events)", attest.MaxEvents)
	}
	if s.f != nil {
		b, err := cbor.Marshal(e)
		if err != nil {
			return err
		}
		rec := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
		if _, err := s.f.Write(append(rec, b...)); err != nil {
			return fmt.Errorf("writing measurement log: %w", err)
		}
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("syncing measurement log: %w", err)
		}
	}
	s.log = append(s.log, e)
	return nil
}

// snapshot returns a copy of the log.
func (s *store) snapshot() attest.EventLog {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(attest.EventLog(nil), s.log...)
}

// reset moves the log aside (a previous boot's) and starts an empty one.
func (s *store) reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = nil
	if s.f == nil {
		return nil
	}
	s.f.Close()
	s.f = nil
	if err := os.Rename(s.path, s.path+".prev"); err != nil {
		return err
	}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	s.f = f
	return nil
}

func (s *store) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// recover reconciles the log with the TPM at start-up.
//
//   - Simulated TPM: it was just created, so every logged event is extended
//     again (the simulator's PCRs are only as real as the log).
//   - Hardware: if the log replays to PCRs 15 and 16, nothing to do; if both
//     PCRs are zero, the log is a previous boot's and is set aside; if it
//     replays without its last event, that event was logged but not extended
//     (crash in between) and is extended now; anything else is refused.
func recoverLog(s *store, tpm *attest.TPM, simulated bool) (repaired int, err error) {
	log := s.snapshot()
	if simulated {
		for _, e := range log {
			if err := tpm.Extend(e); err != nil {
				return 0, err
			}
		}
		return len(log), nil
	}
	pcr := map[uint32][]byte{}
	for _, i := range []uint32{attest.MeasurePCR, attest.ManifestPCR} {
		if pcr[i], err = tpm.ReadPCR(int(i)); err != nil {
			return 0, err
		}
	}
	matches := func(l attest.EventLog) bool {
		for i, v := range pcr {
			r, err := l.Replay(i)
			if err != nil || !bytes.Equal(r, v) {
				return false
			}
		}
		return true
	}
	zero := make([]byte, 32)
	switch {
	case matches(log):
		return 0, nil
	case bytes.Equal(pcr[attest.MeasurePCR], zero) && bytes.Equal(pcr[attest.ManifestPCR], zero):
		return 0, s.reset()
	case len(log) > 0 && matches(log[:len(log)-1]):
		return 1, tpm.Extend(log[len(log)-1])
	}
	got, _ := log.Replay(attest.MeasurePCR)
	return 0, fmt.Errorf("%w: log replays PCR 15 to %x, TPM has %x", errLogMismatch, got, pcr[attest.MeasurePCR])
}

var errLogMismatch = errors.New("measurement log does not match the TPM")
