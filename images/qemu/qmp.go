package qemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"
)

// qmp connects to qemu's QMP socket, negotiates capabilities and runs one
// command without arguments.
func qmp(path, command string) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return fmt.Errorf("qemu: connecting to QMP: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := readQMP(r); err != nil { // the greeting
		return fmt.Errorf("qemu: QMP greeting: %w", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			return fmt.Errorf("qemu: QMP %s: %w", cmd, err)
		}
		for {
			m, err := readQMP(r)
			if err != nil {
				return fmt.Errorf("qemu: QMP %s: %w", cmd, err)
			}
			if e, ok := m["error"]; ok {
				return fmt.Errorf("qemu: QMP %s: %s", cmd, e)
			}
			if _, ok := m["return"]; ok {
				break
			}
			// An asynchronous event: skip it.
		}
	}
	return nil
}

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
