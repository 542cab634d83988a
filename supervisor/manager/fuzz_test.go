package manager

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/cvms"
)

// FuzzLoadConfig: the environment file and the kernel command line are
// outside input; parsing never panics and a URL is always reported or refused.
func FuzzLoadConfig(f *testing.F) {
	f.Add("AGENT_CVM_GRPC_URL=h:1\nAGENT_CVM_ID=x\n", "quiet")
	f.Add("# c\nexport AGENT_CVM_GRPC_URL='a:2'\n", "AGENT_CVM_GRPC_URL=b:3")
	f.Add("no equals sign", "")
	f.Add("AGENT_CVM_GRPC_URL=\"unterminated\n", "AGENT_CVM_GRPC_CLIENT_CERT=/c")
	f.Fuzz(func(t *testing.T, file, cmdline string) {
		p := filepath.Join(t.TempDir(), "environment")
		os.WriteFile(p, []byte(file), 0o600)
		c, err := LoadConfig(p, cmdline)
		if err == nil && c.URL == "" {
			t.Fatal("no error and no URL")
		}
	})
}

// FuzzRunReq: reassembled chunk bytes are decoded and validated; neither
// may panic, and a request that passes has what the supervisor relies on.
func FuzzRunReq(f *testing.F) {
	k := []byte{0x30, 0x59}
	good, _ := proto.Marshal(&cvms.ComputationRunReq{Id: "1", Algorithm: &cvms.Algorithm{Hash: make([]byte, 32), UserKey: k}})
	f.Add(good)
	f.Add([]byte{0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		a := newAssembler(1<<20, 0)
		data, done, err := a.add("id", b, true)
		if err != nil || !done {
			return
		}
		var r cvms.ComputationRunReq
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		if ValidateRunReq(&r) == nil && (r.GetId() == "" || r.GetAlgorithm() == nil || len(r.GetResultConsumers()) == 0) {
			t.Fatalf("validated an incomplete request %v", &r)
		}
	})
}
