package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// qmpConn is one QMP session with qemu over an inherited socketpair: the
// greeting and capability negotiation happen once, at the start; commands
// are serialised.
type qmpConn struct {
	mu sync.Mutex
	c  net.Conn
	r  *bufio.Reader
}

// newQMP takes over f (one end of qemu's QMP socketpair) and negotiates
// capabilities, within ctx (30 s without a deadline).
func newQMP(ctx context.Context, f *os.File) (*qmpConn, error) {
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("qemu: QMP: %w", err)
	}
	q := &qmpConn{c: c, r: bufio.NewReader(c)}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	c.SetDeadline(dl)
	if _, err := readQMP(q.r); err != nil { // the greeting
		c.Close()
		return nil, fmt.Errorf("qemu: QMP greeting: %w", err)
	}
	if err := q.exchange("qmp_capabilities"); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// run runs one command without arguments.
func (q *qmpConn) run(command string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.c.SetDeadline(time.Now().Add(10 * time.Second))
	return q.exchange(command)
}

// exchange sends command and reads up to its answer, skipping events.
func (q *qmpConn) exchange(command string) error {
	if _, err := fmt.Fprintf(q.c, `{"execute":%q}`+"\n", command); err != nil {
		return fmt.Errorf("qemu: QMP %s: %w", command, err)
	}
	for {
		m, err := readQMP(q.r)
		if err != nil {
			return fmt.Errorf("qemu: QMP %s: %w", command, err)
		}
		if e, ok := m["error"]; ok {
			return fmt.Errorf("qemu: QMP %s: %s", command, e)
		}
		if _, ok := m["return"]; ok {
			return nil
		}
		// An asynchronous event: skip it.
	}
}

func (q *qmpConn) close() { q.c.Close() }

// QMPMessage is one JSON object from qemu.
type QMPMessage map[string]json.RawMessage

func readQMP(r *bufio.Reader) (QMPMessage, error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		if err == io.EOF && len(line) == 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	var m QMPMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("bad QMP message %q: %v", line, err)
	}
	return m, nil
}

// HMP runs one human-monitor command (info registers, info status, ...)
// through QMP and returns its text: qemu's own view of a guest that no
// longer answers on its ports.
func (v *VM) HMP(command string) (string, error) {
	if v.qmp == nil {
		return "", fmt.Errorf("qemu: no QMP monitor")
	}
	return v.qmp.hmp(command)
}

func (q *qmpConn) hmp(command string) (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.c.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := json.Marshal(map[string]any{"execute": "human-monitor-command", "arguments": map[string]string{"command-line": command}})
	if err != nil {
		return "", err
	}
	if _, err := q.c.Write(append(req, '\n')); err != nil {
		return "", fmt.Errorf("qemu: HMP %s: %w", command, err)
	}
	for {
		m, err := readQMP(q.r)
		if err != nil {
			return "", fmt.Errorf("qemu: HMP %s: %w", command, err)
		}
		if e, ok := m["error"]; ok {
			return "", fmt.Errorf("qemu: HMP %s: %s", command, e)
		}
		if r, ok := m["return"]; ok {
			var out string
			if err := json.Unmarshal(r, &out); err != nil {
				return "", fmt.Errorf("qemu: HMP %s: answer %s: %v", command, r, err)
			}
			return out, nil
		}
	}
}

// HostThreads lists the threads of qemu and of its swtpm on the host, each
// as name, state and wait channel: whether qemu's vCPUs run, or wait, and
// on what.
func (v *VM) HostThreads() string {
	var b strings.Builder
	for _, p := range []struct {
		name string
		cmd  *exec.Cmd
	}{{"qemu", v.cmd}, {"swtpm", v.swtpm}} {
		if p.cmd == nil || p.cmd.Process == nil {
			continue
		}
		dir := fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)
		tasks, err := os.ReadDir(dir)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", p.name, err)
			continue
		}
		for _, t := range tasks {
			stat, _ := os.ReadFile(filepath.Join(dir, t.Name(), "stat"))
			wchan, _ := os.ReadFile(filepath.Join(dir, t.Name(), "wchan"))
			comm, _ := os.ReadFile(filepath.Join(dir, t.Name(), "comm"))
			state := "?"
			if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
				state = string(stat[i+2])
			}
			fmt.Fprintf(&b, "%s %s %s %s %s\n", p.name, t.Name(), strings.TrimSpace(string(comm)), state, wchan)
		}
	}
	return b.String()
}
