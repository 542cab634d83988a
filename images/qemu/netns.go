package qemu

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// NetNS is a network namespace of its own with only a loopback interface,
// for a VM whose network must stay there: Cocos's manager's qemu forwards
// a port on every address of its host (hostfwd=tcp::PORT-:7002) and does
// not restrict the guest's user network, which in such a namespace reaches
// nothing but that namespace's loopback.
//
// Sockets made by Do's functions (listeners, connections) and processes
// started by them belong to the namespace; both can be used from anywhere
// afterwards. Every function runs on one thread that lives until Close, so
// a process started there with Pdeathsig (qemu, swtpm) is not killed
// because its forking thread went away.
type NetNS struct {
	calls chan func()
	done  chan struct{}
	once  sync.Once
}

// NewNetNS makes a network namespace (CLONE_NEWNET) with loopback up.
func NewNetNS() (*NetNS, error) {
	n := &NetNS{calls: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread leaves the host's namespace, so it
		// must end with this goroutine rather than run other goroutines.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("qemu: making a network namespace: %w", os.NewSyscallError("unshare", err))
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for {
			select {
			case f := <-n.calls:
				f()
			case <-n.done:
				return
			}
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return n, nil
}

// loopbackUp sets lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("qemu: loopback: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("qemu: loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("qemu: loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("qemu: setting lo up: %w", err)
	}
	return nil
}

// Do runs f in the namespace and returns its error.
func (n *NetNS) Do(f func() error) error {
	var err error
	ran := make(chan struct{})
	select {
	case n.calls <- func() { err = f(); close(ran) }:
	case <-n.done:
		return errors.New("qemu: network namespace closed")
	}
	<-ran
	return err
}

// Close ends the namespace's thread (the namespace goes with its last
// socket and process). Stop the processes started in it first.
func (n *NetNS) Close() { n.once.Do(func() { close(n.done) }) }
