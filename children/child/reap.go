package child

import (
	"context"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// reapOrphans reaps every exited child of this process until ctx ends. It is
// started only when the child is PID 1 of its own PID namespace (the
// supervisor's sandboxes): orphans of the namespace are reparented to it, and
// without a reaper they would stay zombies until the sandbox is destroyed.
//
// It waits for any pid (wait4(-1, WNOHANG)), so it would steal the exit
// status from code waiting for a specific child. That is safe because
// children never start processes with os/exec or os.StartProcess (they ask
// the supervisor for algorithm sandboxes instead; `grep -rn os/exec
// children/` finds only test helpers). A child that ever forks a process it
// waits for must stop calling this.
func reapOrphans(ctx context.Context) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	defer signal.Stop(ch)
	for {
		reapAll()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// reapAll collects every zombie child there is now.
func reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
