package algosandbox

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// algoNet is a network namespace made for one algorithm sandbox before the
// sandbox exists: loopback up and a TCP listener on 127.0.0.1:<port> inside
// it. The sandbox joins it (Spec.Net), the listener goes to the egress child,
// so the only way out of the namespace is the egress proxy. Making the
// listener before the algorithm starts means there is no window in which the
// algorithm could bind the proxy's port itself.
type algoNet struct {
	ns       *os.File // the namespace (nsfs); keeps it alive until the sandbox joined
	listener *os.File // the proxy's listening socket, inside ns
}

// newAlgoNet makes the namespace on a locked OS thread and puts the thread
// back into the supervisor's own namespace before returning it. If the
// thread cannot be restored it stays locked, and Go ends it when the
// goroutine returns: no other goroutine ever runs in the wrong namespace.
func newAlgoNet(port int) (n *algoNet, err error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("opening own netns: %w", err)
	}
	defer orig.Close()
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
	}()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		restored = true
		return nil, fmt.Errorf("unshare netns: %w", err)
	}
	n = &algoNet{}
	n.ns, err = os.Open("/proc/thread-self/ns/net")
	if err == nil {
		err = loopbackUp()
	}
	if err == nil {
		n.listener, err = listenTCP4(port)
	}
	if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr == nil {
		restored = true
	} else if err == nil {
		err = fmt.Errorf("returning to own netns: %w", serr)
	}
	if err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Close releases the supervisor's references (the namespace lives on while
// the sandbox or the listener's holder uses it).
func (n *algoNet) Close() {
	if n.ns != nil {
		n.ns.Close()
	}
	if n.listener != nil {
		n.listener.Close()
	}
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

func listenTCP4(port int) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("proxy socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("proxy bind 127.0.0.1:%d: %w", port, err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("proxy-listener:127.0.0.1:%d", port)), nil
}

// dupFile returns a new *os.File (close-on-exec) for the same open file as f.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
