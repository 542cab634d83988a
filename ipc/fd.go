package ipc

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// MaxPacket is the largest control or edge packet accepted.
const MaxPacket = 1 << 20

// maxFDs is the most fds one packet may carry.
const maxFDs = 16

// Socketpair returns both ends of a new AF_UNIX socketpair of the given type
// (unix.SOCK_STREAM or unix.SOCK_SEQPACKET), close-on-exec, named for errors
// and logs. The caller owns both ends.
func Socketpair(typ int, name string) (a, b *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	return os.NewFile(uintptr(fds[0]), name+"[0]"), os.NewFile(uintptr(fds[1]), name+"[1]"), nil
}

// NewFile returns a pollable *os.File for fd, which the caller passes
// ownership of (an fd inherited at exec, say). It puts fd in non-blocking mode
// so that reads and writes go through Go's poller and honour deadlines.
func NewFile(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, os.NewSyscallError("setting O_NONBLOCK on "+name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// fdOf returns f's descriptor without File.Fd's side effect of switching it
// to blocking mode. The number is valid while f is open.
func FD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	n := -1
	if err := rc.Control(func(fd uintptr) { n = int(fd) }); err != nil {
		return -1, err
	}
	return n, nil
}

// sendPacket writes one packet with the given fds attached. It does not take
// ownership of the files.
func sendPacket(sock *os.File, data []byte, files []*os.File) error {
	if len(data) > MaxPacket {
		return &ProtocolError{What: fmt.Sprintf("packet of %d bytes exceeds %d", len(data), MaxPacket)}
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			n, err := FD(f)
			if err != nil {
				return fmt.Errorf("ipc: sending %s: %w", f.Name(), err)
			}
			fds[i] = n
		}
		oob = unix.UnixRights(fds...)
	}
	rc, err := sock.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		for {
			serr = unix.Sendmsg(int(fd), data, oob, nil, 0)
			if serr == unix.EINTR {
				continue
			}
			return serr != unix.EAGAIN
		}
	})
	if werr != nil {
		return werr
	}
	if serr != nil {
		return os.NewSyscallError("sendmsg", serr)
	}
	return nil
}

// recvPacket reads one packet and every fd attached to it (received
// close-on-exec and switched to non-blocking). On error, every received fd is
// closed. The peer closing its end is reported as errEOF. The caller owns the
// returned fds; closeFDs releases them.
func recvPacket(sock *os.File, buf []byte) (n int, fds []int, err error) {
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	rc, err := sock.SyscallConn()
	if err != nil {
		return 0, nil, err
	}
	var oobn, flags int
	var rerr error
	perr := rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
			if rerr == unix.EINTR {
				continue
			}
			return rerr != unix.EAGAIN
		}
	})
	if perr != nil {
		return 0, nil, perr
	}
	if rerr != nil {
		return 0, nil, os.NewSyscallError("recvmsg", rerr)
	}
	// Parse every SCM_RIGHTS message first so that nothing we received leaks,
	// whatever else is wrong with the packet.
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return 0, nil, os.NewSyscallError("parsing control message", perr)
		}
		for _, m := range msgs {
			got, ferr := unix.ParseUnixRights(&m)
			if ferr != nil {
				continue
			}
			for _, fd := range got {
				unix.SetNonblock(fd, true)
				fds = append(fds, fd)
			}
		}
	}
	fail := func(e error) (int, []int, error) {
		closeFDs(fds)
		return 0, nil, e
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail(&ProtocolError{What: "control data truncated (too many fds)"})
	}
	if flags&unix.MSG_TRUNC != 0 {
		return fail(&ProtocolError{What: fmt.Sprintf("packet larger than %d bytes", len(buf))})
	}
	if n == 0 && len(fds) == 0 {
		return fail(errEOF)
	}
	return n, fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
