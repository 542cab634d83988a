package qemu

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Pipe is the guestfwd helper: qemu starts it for each connection the guest
// makes to GuestManagerAddr, with that connection as stdin and stdout. It
// connects to addr and copies both ways until either side closes.
func Pipe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("qemu: pipe to %s: %w", addr, err)
	}
	defer c.Close()
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(c, os.Stdin)
		c.(*net.TCPConn).CloseWrite()
		done <- err
	}()
	go func() {
		_, err := io.Copy(os.Stdout, c)
		done <- err
	}()
	// Either direction ending means the guest or the manager hung up; a
	// half-open guest connection is not worth keeping.
	return <-done
}
