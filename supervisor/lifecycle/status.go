package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ChildInfo is one child's state as shown in children.json and Children.
type ChildInfo struct {
	Name       string `json:"name"`
	Status     Status `json:"status"`
	Pid        int    `json:"pid,omitempty"`
	Generation uint32 `json:"generation"`
	Restarts   int    `json:"restarts"`
	// Serving is set for children the supervisor dials (agent, logfwd) once a
	// gRPC call over the edge was answered by this generation.
	Serving bool `json:"serving,omitempty"`
	// Sandbox is the id of the current incarnation's sandbox (its
	// container under the runtime's state directory, and its cgroup's leaf).
	Sandbox string `json:"sandbox,omitempty"`
	// StandbyPid is the pid of the child's standby, when it has one built.
	StandbyPid int `json:"standby_pid,omitempty"`
	// LastExit is how the last incarnation ended ("exit status 1: not READY
	// within 10s", ...); "" before any exit.
	LastExit string `json:"last_exit,omitempty"`
}

func (s *Supervisor) snapshot() []ChildInfo {
	out := make([]ChildInfo, 0, len(s.table.Children))
	for _, spec := range s.table.Children {
		c := s.children[spec.Name]
		ci := ChildInfo{Name: spec.Name, Status: c.status, Generation: c.gen, Restarts: c.restarts.Total(), Serving: c.serving && c.inc != nil, LastExit: c.lastExit}
		if c.inc != nil {
			ci.Pid = c.inc.sb.Pid()
			ci.Sandbox = c.inc.sb.ID()
		}
		if c.hasStandby() {
			ci.StandbyPid = c.standby.sb.Pid()
		}
		out = append(out, ci)
	}
	return out
}

// Children returns the state of every child.
func (s *Supervisor) Children(ctx context.Context) ([]ChildInfo, error) {
	var out []ChildInfo
	err := s.do(ctx, func() { out = s.snapshot() })
	return out, err
}

// writeStatus writes RunDir/children.json atomically (for operators and tests).
func (s *Supervisor) writeStatus() {
	b, err := json.MarshalIndent(map[string]any{"pid": os.Getpid(), "listen": s.cfg.ListenAddr, "computation_id": s.computationID(), "children": s.snapshot()}, "", " ")
	if err == nil {
		tmp := filepath.Join(s.cfg.RunDir, "children.json.tmp")
		if err = os.WriteFile(tmp, b, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(s.cfg.RunDir, "children.json"))
		}
	}
	if err != nil && !s.statusFailed {
		s.log.Warn("children.json not written (said once)", "err", err)
	}
	s.statusFailed = err != nil
}

// noteBooted logs, once, when every child is READY for the first time:
// the end of the boot, with the memory the whole system uses then (in the
// VM, where it is the guest's; not in dev mode, where it would be the
// host's).
func (s *Supervisor) noteBooted() {
	if s.booted {
		return
	}
	for _, c := range s.children {
		if c.status != StatusReady {
			return
		}
	}
	s.booted = true
	for _, c := range s.children {
		s.armStandby(c)
	}
	attrs := []any{"after", time.Since(s.bornAt).Round(time.Millisecond)}
	if !s.cfg.Dev {
		if used, err := memUsedMiB(); err == nil {
			attrs = append(attrs, "mem_used_mib", used)
		}
	}
	s.log.Info("all children ready", attrs...)
}

// memUsedMiB is MemTotal - MemAvailable from /proc/meminfo.
func memUsedMiB() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	var total, avail int64 = -1, -1
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = n
		case "MemAvailable:":
			avail = n
		}
	}
	if total < 0 || avail < 0 {
		return 0, errors.New("supervisor: /proc/meminfo lacks MemTotal or MemAvailable")
	}
	return (total - avail) / 1024, nil
}
