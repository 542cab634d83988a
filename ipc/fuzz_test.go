package ipc

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
)

// FuzzControlRecv: whatever bytes a peer sends as a control packet, Recv
// returns either a message with a known body or a *ProtocolError, never
// panics, and never hands back fds the packet did not name.
func FuzzControlRecv(f *testing.F) {
	for _, m := range []*control.Message{
		{Body: &control.Message_Ready{Ready: &control.Ready{}}},
		{Body: &control.Message_Rewire{Rewire: &control.Rewire{Edge: "to:agent"}}},
		{Body: &control.Message_StartFailed{StartFailed: &control.StartFailed{Error: "boom"}}, FdNames: []string{"x"}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte{0xff, 0x00, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return // a zero-length packet is how SEQPACKET says EOF
		}
		a, c, err := Socketpair(unix.SOCK_SEQPACKET, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		ctl := NewControl(c)
		defer ctl.Close()
		if err := sendPacket(a, b, nil); err != nil {
			t.Skip(err)
		}
		msg, files, err := ctl.Recv()
		if err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a ProtocolError", err)
			}
			return
		}
		if msg.GetBody() == nil {
			t.Fatal("message without a body accepted")
		}
		if len(files) != 0 {
			t.Fatalf("%d files from a packet that carried none", len(files))
		}
	})
}
