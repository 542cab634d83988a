package vm

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
)

// tpmConn frames the swtpm data channel for go-tpm's one-Read-per-response
// transport: Read returns exactly one whole TPM response.
type tpmConn struct{ c net.Conn }

func (t tpmConn) Write(b []byte) (int, error) { return t.c.Write(b) }

func (t tpmConn) Read(b []byte) (int, error) {
	var hdr [10]byte // tag, size, response code
	if _, err := io.ReadFull(t.c, hdr[:]); err != nil {
		return 0, err
	}
	size := int(binary.BigEndian.Uint32(hdr[2:6]))
	if size < len(hdr) || size > len(b) {
		return 0, fmt.Errorf("tpm response of %d bytes does not fit %d", size, len(b))
	}
	copy(b, hdr[:])
	if _, err := io.ReadFull(t.c, b[len(hdr):size]); err != nil {
		return 0, err
	}
	return size, nil
}

// provisionAK plays the cloud provider that knows its vTPMs: before the VM
// boots, it starts swtpm on the VM's future TPM state, derives the
// attestation key cvmd's attestation child will use (go-tpm-tools'
// AttestationKeyECC is deterministic from the TPM's seed), and returns the
// SHA-256 of its TPMT_PUBLIC, which a verifier pins. stateDir is the
// qemu.Config.Dir's "tpm" directory.
func provisionAK(t testing.TB, stateDir string) string {
	t.Helper()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "tpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+stateDir,
		"--server", "type=unixio,path="+sock, "--flags", "not-need-init,startup-clear")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting swtpm to provision the AK: %v", err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("connecting to swtpm: %v\n%s", err, stderr.String())
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	ak, err := client.AttestationKeyECC(tpmConn{c})
	if err != nil {
		t.Fatalf("deriving the AK on swtpm: %v\n%s", err, stderr.String())
	}
	defer ak.Close()
	pub, err := ak.PublicArea().Encode()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// childTableHash is what `cvmd supervise --print-sandbox` says the measured
// child table hashes to: the verifier's expectation, from the binary it built.
func childTableHash(t testing.TB, cvmd string) string {
	t.Helper()
	out, err := exec.Command(cvmd, "supervise", "--print-sandbox").Output()
	if err != nil {
		t.Fatalf("cvmd supervise --print-sandbox: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if h, ok := strings.CutPrefix(l, "sha256 "); ok {
			return strings.TrimSpace(h)
		}
	}
	t.Fatalf("cvmd supervise --print-sandbox printed no sha256 line:\n%s", out)
	return ""
}
