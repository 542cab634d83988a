package agent

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/config"
)

// TestIMAPCR10InEveryMessage: a list over one 1 MiB message arrives in
// several, each carrying PCR10, as Cocos's CLI needs (it copies pcr10[:20]
// from every message and panics on an empty one); cvm's own CLI checks the
// whole list against it.
func TestIMAPCR10InEveryMessage(t *testing.T) {
	dir := t.TempDir()
	ima, pcrFile := filepath.Join(dir, "ascii_runtime_measurements"), filepath.Join(dir, "pcr10")
	var list strings.Builder
	pcr := make([]byte, 20)
	for i := 0; list.Len() < 3<<20/2; i++ {
		name := fmt.Sprintf("/usr/lib/file-%06d", i)
		d := sha1.Sum([]byte(name))
		fmt.Fprintf(&list, "10 %x ima-ng sha256:%064x %s\n", d, i, name)
		h := sha1.New()
		h.Write(pcr)
		h.Write(d[:])
		pcr = h.Sum(nil)
	}
	os.WriteFile(ima, []byte(list.String()), 0o644)
	os.WriteFile(pcrFile, []byte(hex.EncodeToString(pcr)+"\n"), 0o644)
	h := agenttest.Start(t, agenttest.Options{Settings: &config.AgentSettings{ImaMeasurementsPath: ima, Pcr10Path: pcrFile}})

	conn, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return h.Dial(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := agentpb.NewAgentServiceClient(conn).IMAMeasurements(context.Background(), &agentpb.IMAMeasurementsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, total := 0, 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		total += len(m.GetFile())
		if hex.EncodeToString(m.GetPcr10()) != hex.EncodeToString(pcr) {
			t.Fatalf("message %d carries PCR10 %x, want %x", msgs, m.GetPcr10(), pcr)
		}
	}
	if msgs < 2 || total != list.Len() {
		t.Fatalf("%d messages, %d bytes; want several carrying the %d-byte list", msgs, total, list.Len())
	}

	w := &world{dir: t.TempDir(), h: h}
	w.useHarness()
	if got := w.mustCVM(t, false, "ima-measurements", filepath.Join(w.dir, "ima.txt")); !strings.Contains(got, "matches PCR10") {
		t.Fatalf("ima: %s", got)
	}
}
