package ipc

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// edgeByte is the payload of every edge packet: one byte so that a packet with
// an fd is never mistaken for the zero-length read that means EOF.
var edgeByte = []byte{'c'}

// Listener accepts connections that clients send over one or more edges. It
// implements net.Listener, so a gRPC or HTTP server can Serve it.
type Listener struct {
	name  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu    sync.Mutex
	edges map[*os.File]bool // guarded by mu
}

// NewListener returns a Listener with no edges yet; Add gives it some.
func NewListener(name string) *Listener {
	return &Listener{name: name, conns: make(chan net.Conn), done: make(chan struct{}), edges: map[*os.File]bool{}}
}

// Add starts accepting connections sent over edge. It takes ownership of edge;
// the edge is closed when its peer hangs up or the Listener is closed.
func (l *Listener) Add(edge *os.File) {
	l.mu.Lock()
	select {
	case <-l.done:
		l.mu.Unlock()
		edge.Close()
		return
	default:
	}
	l.edges[edge] = true
	l.mu.Unlock()
	l.wg.Add(1)
	go l.serveEdge(edge)
}

func (l *Listener) serveEdge(edge *os.File) {
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		delete(l.edges, edge)
		l.mu.Unlock()
		edge.Close()
	}()
	buf := make([]byte, 16)
	for {
		_, fds, err := recvPacket(edge, buf)
		if err != nil {
			if _, ok := err.(*ProtocolError); ok {
				continue // a bad packet from one client does not end the edge
			}
			return
		}
		if len(fds) != 1 {
			closeFDs(fds)
			continue
		}
		c, err := connFromFD(fds[0], l.name)
		if err != nil {
			continue
		}
		select {
		case l.conns <- c:
		case <-l.done:
			c.Close()
			return
		}
	}
}

// Edges reports how many edges are being served.
func (l *Listener) Edges() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.edges)
}

// Accept returns the next connection a client sent.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, ErrClosed
	}
}

// Close stops accepting, closes every edge and waits for the edge goroutines.
// It is idempotent.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.mu.Lock()
		for e := range l.edges {
			// Shutdown, not Close: it wakes the goroutine blocked in recvmsg,
			// which then closes the file it owns.
			if rc, err := e.SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
			}
		}
		l.mu.Unlock()
	})
	l.wg.Wait()
	return nil
}

// Addr returns a placeholder address naming the listener.
func (l *Listener) Addr() net.Addr { return Addr(l.name) }

// Addr names an fd-based endpoint.
type Addr string

func (a Addr) Network() string { return "fd" }
func (a Addr) String() string  { return string(a) }

// Dialer makes connections over an edge. The edge can be replaced at any time
// (the server restarted); Dial uses the newest one, waiting for it if needed.
type Dialer struct {
	name string

	mu      sync.Mutex
	edge    *os.File      // guarded by mu; nil while there is none
	changed chan struct{} // guarded by mu; closed and replaced on every change
	closed  bool          // guarded by mu
}

// NewDialer returns a Dialer over edge (which may be nil: Dial then waits for
// Replace). It takes ownership of edge.
func NewDialer(name string, edge *os.File) *Dialer {
	return &Dialer{name: name, edge: edge, changed: make(chan struct{})}
}

// Replace swaps in a new edge, closing the old one. It takes ownership of edge.
func (d *Dialer) Replace(edge *os.File) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		edge.Close()
		return
	}
	if d.edge != nil {
		d.edge.Close()
	}
	d.edge = edge
	close(d.changed)
	d.changed = make(chan struct{})
}

// Close closes the edge; later Dials fail with ErrClosed. Idempotent.
func (d *Dialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		if d.edge != nil {
			d.edge.Close()
			d.edge = nil
		}
		close(d.changed)
	}
	return nil
}

// Dial makes a new connection to the server at the other end of the edge.
// If the edge is gone (the server died), it waits for Replace until ctx ends.
func (d *Dialer) Dial(ctx context.Context) (net.Conn, error) {
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, ErrClosed
		}
		edge, changed := d.edge, d.changed
		d.mu.Unlock()
		if edge != nil {
			c, err := d.dialOver(edge)
			if err == nil {
				return c, nil
			}
			// The edge is dead: forget it unless it was already replaced.
			d.mu.Lock()
			if d.edge == edge {
				d.edge.Close()
				d.edge = nil
			}
			d.mu.Unlock()
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w %s: %v", ErrNoEdge, d.name, ctx.Err())
		}
	}
}

func (d *Dialer) dialOver(edge *os.File) (net.Conn, error) {
	mine, theirs, err := Socketpair(unix.SOCK_STREAM, d.name)
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	if err := sendPacket(edge, edgeByte, []*os.File{theirs}); err != nil {
		mine.Close()
		return nil, fmt.Errorf("ipc: dialing %s: %w", d.name, err)
	}
	c, err := net.FileConn(mine)
	mine.Close() // FileConn dups
	if err != nil {
		return nil, fmt.Errorf("ipc: dialing %s: %w", d.name, err)
	}
	return c, nil
}

// connFromFD turns a received SOCK_STREAM fd into a net.Conn, taking ownership.
func connFromFD(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileConn dups
	return net.FileConn(f)
}
