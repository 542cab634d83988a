package attestation

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenTPMIsBlocking: the TPM device is opened in blocking mode (a
// non-blocking /dev/tpmrm0 answers a read right after a write with EOF
// when the command is still queued, then EBUSY). A FIFO stands in for the
// device: like it, it is pollable, so os.OpenFile would make it
// non-blocking.
func TestOpenTPMIsBlocking(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "tpm")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	rw, err := openTPM(fifo)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	rc, err := rw.(*os.File).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	// Control, not Fd: Fd would itself put the file in blocking mode.
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil || ferr != nil {
		t.Fatal(err, ferr)
	}
	if flags&unix.O_NONBLOCK != 0 {
		t.Fatalf("the TPM device is open non-blocking (flags %#x)", flags)
	}
}
