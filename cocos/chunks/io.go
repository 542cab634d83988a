package chunks

import (
	"errors"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/mem"
)

// Pool is a mem.BufferPool of buffers of one size: what a sender reads
// chunks into and gRPC hands back once it has written them. Idle buffers
// go with the garbage collector (a sync.Pool), so a process that sent a
// file does not keep its buffers.
type Pool struct {
	size int
	p    sync.Pool
}

// NewPool returns a Pool of size-byte buffers.
func NewPool(size int) *Pool {
	return &Pool{size: size, p: sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}

// Get returns a buffer of the pool's size (length ignored: chunks are
// read into whole buffers).
func (p *Pool) Get(int) *[]byte {
	b := p.p.Get().(*[]byte)
	*b = (*b)[:p.size]
	return b
}

// Put returns b to the pool.
func (p *Pool) Put(b *[]byte) {
	if cap(*b) == p.size {
		p.p.Put(b)
	}
}

// readAhead is how many chunks ReadChunks reads ahead of the sending.
const readAhead = 2

// ReadChunks reads r to its end in chunks of the pool's size, in a
// goroutine of its own that stays readAhead chunks ahead of send, so that
// reading the file overlaps sending it. send gets each chunk as a buffer
// it owns (it passes it to gRPC in a Message, which frees it). It returns
// the bytes read and the first error of reading or of send; the reading
// goroutine has ended when it returns.
func ReadChunks(r io.Reader, pool *Pool, send func(mem.Buffer) error) (int64, error) {
	type chunk struct {
		buf mem.Buffer
		err error
	}
	ch := make(chan chunk, readAhead)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(ch)
		for {
			bp := pool.Get(pool.size)
			n, err := io.ReadFull(r, *bp)
			var c chunk
			if n > 0 {
				*bp = (*bp)[:n]
				c.buf = mem.NewBuffer(bp, pool)
			} else {
				pool.Put(bp)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			c.err = err
			select {
			case ch <- c:
			case <-stop:
				if c.buf != nil {
					c.buf.Free()
				}
				return
			}
			if err != nil {
				return
			}
		}
	})
	finish := func() {
		close(stop)
		for c := range ch {
			if c.buf != nil {
				c.buf.Free()
			}
		}
		wg.Wait()
	}
	var total int64
	for c := range ch {
		if c.buf != nil {
			n := c.buf.Len()
			if err := send(c.buf); err != nil {
				finish()
				return total, err
			}
			total += int64(n)
		}
		if c.err == io.EOF {
			break
		}
		if c.err != nil {
			finish()
			return total, c.err
		}
	}
	finish()
	return total, nil
}

// WriteBuffers writes bs to f with as few writev calls as it takes (one for
// a chunk of up to 1024 buffers).
func WriteBuffers(f *os.File, bs mem.BufferSlice) error {
	iov := make([][]byte, 0, len(bs))
	for _, b := range bs {
		iov = append(iov, b.ReadOnlyData())
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		werr = writev(int(fd), iov)
		return true
	}); err != nil {
		return err
	}
	if werr != nil {
		return &os.PathError{Op: "write", Path: f.Name(), Err: werr}
	}
	return nil
}

// writev writes all of iov to fd, resuming after short writes.
func writev(fd int, iov [][]byte) error {
	const iovMax = 1024 // Linux's IOV_MAX
	for {
		for len(iov) > 0 && len(iov[0]) == 0 {
			iov = iov[1:]
		}
		if len(iov) == 0 {
			return nil
		}
		n, err := unix.Writev(fd, iov[:min(len(iov), iovMax)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		for n > 0 {
			if n < len(iov[0]) {
				iov[0] = iov[0][n:]
				break
			}
			n -= len(iov[0])
			iov = iov[1:]
		}
	}
}
