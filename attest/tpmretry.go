package attest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"golang.org/x/sys/unix"
)

// A TPM command can time out in the kernel: the driver waits the
// command's duration (750 ms for most, TPM2 spec defaults) and then
// cancels it, and the write to /dev/tpmrm0 fails with ETIME ("timer
// expired"). A vTPM under emulation on a loaded host (swtpm under TCG) is
// that slow at times. Whether the TPM ran the command is then unknown, so
// only commands that may run twice are sent again (retryTransport), and an
// extend, which may not, is checked against the PCR it was to change
// (TPM.Extend).

// timeoutAttempts bounds how often a timed-out command is sent (the first
// time included); timeoutBackoff is the pause before the second, doubled
// before each next.
const (
	timeoutAttempts = 4
	timeoutBackoff  = 50 * time.Millisecond
)

// isTPMTimeout reports whether err is the kernel's TPM command timeout.
// Some go-tpm functions wrap the transport's error with %v, so its text
// counts too.
func isTPMTimeout(err error) bool {
	return errors.Is(err, syscall.ETIME) || err != nil && strings.Contains(err.Error(), syscall.ETIME.Error())
}

// retrySafe are the commands that may be sent again after a timeout: those
// that change nothing in the TPM (reads, signatures, quotes), and those
// whose repetition only makes a new transient object or session (at worst
// the lost first one stays loaded until the TPM's reset, as it would if
// the command were not sent again). A PCR extend, a hash sequence update
// or completion, an NV write or a policy command is never sent again here.
var retrySafe = map[tpmutil.Command]bool{
	tpm2.CmdGetCapability:     true,
	tpm2.CmdPCRRead:           true,
	tpm2.CmdReadPublic:        true,
	tpm2.CmdReadNV:            true,
	tpm2.CmdReadPublicNV:      true,
	tpm2.CmdQuote:             true,
	tpm2.CmdCertify:           true,
	tpm2.CmdSign:              true,
	tpm2.CmdGetRandom:         true,
	tpm2.CmdHash:              true,
	tpm2.CmdReadClock:         true,
	tpm2.CmdLoadExternal:      true,
	tpm2.CmdCreatePrimary:     true,
	tpm2.CmdHashSequenceStart: true,
	tpm2.CmdStartAuthSession:  true,
	tpm2.CmdLoad:              true,
	tpm2.CmdFlushContext:      true,
}

// commandCode is the command code of a TPM2 command buffer (header: tag,
// size, code), or 0 if it is too short to have one.
func commandCode(cmd []byte) tpmutil.Command {
	if len(cmd) < 10 {
		return 0
	}
	return tpmutil.Command(binary.BigEndian.Uint32(cmd[6:10]))
}

// retryTransport is a TPM transport that sends a retry-safe command again,
// a bounded number of times, when its write timed out. Everything else
// passes through. Retried counts the commands sent again.
type retryTransport struct {
	rw      io.ReadWriter
	sleep   func(time.Duration)
	retried atomic.Int64
}

func newRetryTransport(rw io.ReadWriter) *retryTransport {
	return &retryTransport{rw: rw, sleep: time.Sleep}
}

func (r *retryTransport) Write(cmd []byte) (int, error) {
	n, err := r.rw.Write(cmd)
	wait := timeoutBackoff
	for attempt := 1; attempt < timeoutAttempts && isTPMTimeout(err) && retrySafe[commandCode(cmd)]; attempt++ {
		r.sleep(wait)
		wait *= 2
		r.retried.Add(1)
		n, err = r.rw.Write(cmd)
	}
	return n, err
}

// Read reads the answer. go-tpm waits for a device file to be readable
// before it reads (tpmutil.RunCommand polls an *os.File, whose Fd also
// makes it blocking, so the kernel runs each write to the end); wrapped,
// the file would no longer be seen as one, and a read of a command the
// kernel still runs returns nothing (EOF) and the next write EBUSY. So the
// wait is done here, as go-tpm does it.
func (r *retryTransport) Read(p []byte) (int, error) {
	if f, ok := r.rw.(*os.File); ok {
		if err := waitReadable(f); err != nil {
			return 0, err
		}
	}
	return r.rw.Read(p)
}

// waitReadable blocks until f has something to read (go-tpm's
// tpmutil.poll).
func waitReadable(f *os.File) error {
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("attest: waiting for the TPM's answer: %w", err)
		}
		if fds[0].Revents&unix.POLLIN == 0 {
			return fmt.Errorf("attest: waiting for the TPM's answer: poll events %#x", fds[0].Revents)
		}
		return nil
	}
}
