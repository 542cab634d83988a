package devmanager

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/cvms"
)

// TestRoutingChunkingAndJSON checks the server the way a guest sees it: the
// computation arrives on the control stream only, in chunks that reassemble
// to the request, with an empty final is_last chunk; messages from the log
// stream are labelled "log" in the JSON output.
func TestRoutingChunkingAndJSON(t *testing.T) {
	req := &cvms.ComputationRunReq{Id: "c1", Name: "n", Description: strings.Repeat("d", 3000)}
	var out testutil.Buffer
	srv := New(Options{Computation: req, ChunkSize: 1000, Out: &out, JSON: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { Serve(ctx, ln, srv, nil); close(served) }()
	defer func() { cancel(); <-served }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := cvms.NewServiceClient(conn)
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()

	logs, err := c.Process(metadata.AppendToOutgoingContext(sctx, "job-id", "vm1", "connection-type", "log-forwarder"))
	if err != nil {
		t.Fatal(err)
	}
	logs.Send(&cvms.ClientStreamMessage{Message: &cvms.ClientStreamMessage_AgentLog{AgentLog: &cvms.AgentLog{Message: "hello", Level: "INFO"}}})
	ctl, err := c.Process(metadata.AppendToOutgoingContext(sctx, "job-id", "vm1"))
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	chunks := 0
	for {
		m, err := ctl.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ch := m.GetRunReqChunks()
		if ch == nil || ch.GetId() != "c1" {
			t.Fatalf("got %v, want runReqChunks of c1", m)
		}
		chunks++
		data = append(data, ch.GetData()...)
		if ch.GetIsLast() {
			if len(ch.GetData()) != 0 {
				t.Fatal("the is_last chunk carries data; Cocos's is empty")
			}
			break
		}
		if len(ch.GetData()) > 1000 {
			t.Fatalf("chunk of %d bytes over the 1000-byte size", len(ch.GetData()))
		}
	}
	var got cvms.ComputationRunReq
	if err := proto.Unmarshal(data, &got); err != nil || !proto.Equal(&got, req) || chunks < 4 {
		t.Fatalf("reassembled %d chunks into %v (%v)", chunks, &got, err)
	}
	if err := srv.Wait(sctx, func(ms []Received) bool { return len(ms) == 1 }); err != nil {
		t.Fatal("log message not received")
	}
	line := strings.TrimSpace(out.String())
	var obj struct {
		S       string          `json:"stream"`
		J       string          `json:"job_id"`
		Message json.RawMessage `json:"message"`
	}
	if err := json.Unmarshal([]byte(line), &obj); err != nil || obj.S != "log" || obj.J != "vm1" || !strings.Contains(string(obj.Message), "hello") {
		t.Fatalf("JSON output %q (%v)", line, err)
	}
}
