package lifecycle

import (
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/internal/testutil"
)

// TestChildOutputLongLineKeepsTheWriterAlive: a child that writes a line
// over 64 KiB (a runner mirroring a long algorithm line) is read to its end:
// the reader never stops, so the writer is not killed by SIGPIPE and its
// own exit status is what the supervisor sees; the long line arrives in
// pieces.
func TestChildOutputLongLineKeepsTheWriterAlive(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// 200 000 bytes without a newline, then more output, then exit 7.
	cmd := exec.Command("/bin/sh", "-c", `head -c 200000 /dev/zero | tr '\0' x; echo; echo after; exit 7`)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var logs testutil.Buffer
	inc := &incarnation{tail: newTail(4096)}
	read := make(chan struct{})
	go func() { defer close(read); readOutput(pr, inc.tail, slog.New(slog.NewJSONHandler(&logs, nil))) }()
	err = cmd.Wait()
	<-read
	if cmd.ProcessState.ExitCode() != 7 {
		t.Fatalf("writer ended with %v, want its own exit status 7 (not SIGPIPE)", err)
	}
	if got := inc.tail.String(); !strings.HasSuffix(got, "after") {
		t.Errorf("crash text ends %q, want the line after the long one", got[max(0, len(got)-40):])
	}
	total := strings.Count(logs.String(), "x")
	if total != 200000 {
		t.Errorf("%d bytes of the long line logged, want 200000", total)
	}
}
