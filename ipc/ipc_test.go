package ipc

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/proto/control"
)

func seqpair(t *testing.T, name string) (*os.File, *os.File) {
	t.Helper()
	a, b, err := Socketpair(unix.SOCK_SEQPACKET, name)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func TestControlCarriesFDs(t *testing.T) {
	a, b := seqpair(t, "ctl")
	ca, cb := NewControl(a), NewControl(b)
	defer ca.Close()
	defer cb.Close()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	msg := &control.Message{Body: &control.Message_Rewire{Rewire: &control.Rewire{Edge: "attestation"}}}
	if err := ca.Send(msg, map[string]*os.File{"attestation": w}); err != nil {
		t.Fatal(err)
	}
	w.Close() // the receiver now holds the only write end
	got, files, err := cb.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got.GetRewire().GetEdge() != "attestation" || len(files) != 1 {
		t.Fatalf("got %v with %d files", got, len(files))
	}
	if _, err := files["attestation"].Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	files["attestation"].Close()
	b2, _ := io.ReadAll(r)
	if string(b2) != "hi" {
		t.Fatalf("read %q through the passed fd", b2)
	}
}

func TestControlRejectsGarbage(t *testing.T) {
	a, b := seqpair(t, "ctl")
	defer a.Close()
	cb := NewControl(b)
	defer cb.Close()
	if err := sendPacket(a, []byte{0xff, 0xff, 0xff}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cb.Recv(); err == nil {
		t.Fatal("garbage accepted")
	} else if _, ok := err.(*ProtocolError); !ok {
		t.Fatalf("err = %v, want *ProtocolError", err)
	}
	a.Close()
	if _, _, err := cb.Recv(); !IsEOF(err) {
		t.Fatalf("after close: err = %v, want EOF", err)
	}
}

func TestDialerListenerAndReplace(t *testing.T) {
	l := NewListener("srv")
	defer l.Close()
	cli, srv := seqpair(t, "edge")
	l.Add(srv)
	d := NewDialer("srv", cli)
	defer d.Close()

	echo := func(l *Listener) {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(c, c); c.Close() }()
	}
	roundtrip := func(l *Listener) {
		t.Helper()
		go echo(l)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := d.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q %v", buf, err)
		}
	}
	roundtrip(l)

	// The server restarts: its old edge dies with it. A Dial then finds the
	// edge dead, forgets it and waits until a new one is handed over.
	l.Close()
	l2 := NewListener("srv")
	defer l2.Close()
	cli2, srv2 := seqpair(t, "edge2")
	l2.Add(srv2)
	go func() {
		// Replace once Dial has dropped the dead edge (it now waits for
		// the next one, or is about to look again).
		deadline := time.Now().Add(5 * time.Second)
		for dropped := false; !dropped; time.Sleep(time.Millisecond) {
			d.mu.Lock()
			dropped = d.edge == nil
			d.mu.Unlock()
			if time.Now().After(deadline) {
				t.Error("Dial never dropped the dead edge")
				break
			}
		}
		d.Replace(cli2)
	}()
	roundtrip(l2)
}

func TestDialWaitsThenTimesOut(t *testing.T) {
	d := NewDialer("nobody", nil)
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := d.Dial(ctx); err == nil {
		t.Fatal("dial without edge succeeded")
	}
}
