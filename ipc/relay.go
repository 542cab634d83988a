package ipc

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Relay is the outcome of a Relay call.
type Relay struct {
	Up, Down  int64 // bytes client → server and server → client
	Idle      bool  // the idle timeout ended it
	ClientErr error // reading the client or writing to it failed (not EOF)
	ServerErr error // the same on the server side
}

// RelayConns copies both ways between client and server until both
// directions end, half-closing each side as its direction ends, or until
// nothing moved either way for idle (then it closes both). last, if not
// nil, holds the time of the latest read (unix ns) and is updated as bytes
// move, so a caller can see which relays are quiet; nil makes a fresh one.
// It does not close the connections otherwise: the caller owns them.
//
// The ingress (TLS client ↔ agent) and the egress (algorithm ↔ upstream)
// both relay this way.
func RelayConns(client, server net.Conn, idle time.Duration, last *atomic.Int64) Relay {
	if last == nil {
		last = new(atomic.Int64)
		last.Store(time.Now().UnixNano())
	}
	var idled atomic.Bool
	var timer *time.Timer
	timer = time.AfterFunc(idle, func() {
		if d := time.Duration(time.Now().UnixNano() - last.Load()); d < idle {
			timer.Reset(idle - d)
			return
		}
		idled.Store(true)
		client.Close()
		server.Close()
	})
	defer timer.Stop()
	var r Relay
	var wg sync.WaitGroup
	wg.Go(func() {
		r.Up, r.ClientErr = copyNoting(server, client, last)
		closeWrite(server)
	})
	r.Down, r.ServerErr = copyNoting(client, server, last)
	closeWrite(client)
	wg.Wait()
	r.Idle = idled.Load()
	return r
}

var relayBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// copyNoting copies src to dst, noting the time of every read. On a write
// error it closes src so that the other direction ends too. EOF and a
// closed connection end it without error.
func copyNoting(dst, src net.Conn, last *atomic.Int64) (int64, error) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			last.Store(time.Now().UnixNano())
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				src.Close()
				return n, werr
			}
		}
		if rerr == io.EOF || errors.Is(rerr, net.ErrClosed) {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// closeWrite half-closes c when it can, else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}
	c.Close()
}
