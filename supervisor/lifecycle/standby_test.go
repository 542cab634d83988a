package lifecycle

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/supervisor/table"
)

// withStandby gives spec a standby.
func withStandby(c table.ChildSpec) table.ChildSpec {
	c.Standby = true
	return c
}

// standbyAfter sets the table's StandbyAfter.
func standbyAfter(d time.Duration, edges ...table.Edge) func(*Config) {
	return func(c *Config) {
		c.Table.StandbyAfter = d
		c.Table.Edges = edges
	}
}

func hasStandby(name string) func(map[string]ChildInfo) bool {
	return func(m map[string]ChildInfo) bool { return allReady(m) && m[name].StandbyPid != 0 }
}

// A restart adopts the standby: the replacement is the standby's process
// (no sandbox built on the way), in its own sandbox, wired to the running
// peer through the ends the supervisor held, and given its config only
// now; another standby is built after StandbyAfter.
func TestRestartAdoptsTheStandby(t *testing.T) {
	r := start(t, []table.ChildSpec{spec("base", "ok"), withStandby(spec("cli", "dial", "base"))},
		standbyAfter(50*time.Millisecond, table.Edge{Client: "cli", Server: "base"}))
	m := r.waitFor("cli's standby", 30*time.Second, hasStandby("cli"))
	old, standbyPid := m["cli"], m["cli"].StandbyPid
	if old.Sandbox != "cli" || standbyPid == old.Pid {
		t.Fatalf("cli runs in sandbox %q with pid %d, its standby has pid %d", old.Sandbox, old.Pid, standbyPid)
	}
	// The standby's program runs, but has no config: it printed nothing.
	if got := logLines(r.log, "child output", "mode dial"); len(got) != 1 {
		t.Fatalf("%d starts of cli logged before the restart, want 1 (the standby waits for its hello):\n%s", len(got), strings.Join(got, "\n"))
	}
	if err := unix.Kill(old.Pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m = r.waitFor("cli back", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["cli"].Generation == 2 && m["cli"].Status == StatusReady
	})
	if m["cli"].Pid != standbyPid || m["cli"].Sandbox == old.Sandbox {
		t.Errorf("generation 2 is pid %d in sandbox %q, want the standby's pid %d in a sandbox of its own", m["cli"].Pid, m["cli"].Sandbox, standbyPid)
	}
	if m["base"].Generation != 1 {
		t.Errorf("base was restarted: %+v", m["base"])
	}
	if len(logLines(r.log, "adopting standby", "child=cli")) != 1 {
		t.Error("the restart did not adopt the standby")
	}
	waitLog(t, r, "reached base generation 2", "child=cli")
	m = r.waitFor("a new standby", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["cli"].StandbyPid != 0 && m["cli"].StandbyPid != standbyPid
	})
	r.stop(30 * time.Second)
	for _, pid := range []int{m["cli"].StandbyPid, m["cli"].Pid, standbyPid} {
		if unix.Kill(pid, 0) == nil {
			t.Errorf("pid %d still runs after the shutdown", pid)
		}
	}
}

// waitLog waits until a log line has every part.
func waitLog(t *testing.T, r *rig, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(25 * time.Second)
	for len(logLines(r.log, parts...)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q", parts)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A standby gets its config only once the child's dependencies are READY:
// with its dependency restarted into an incarnation that never says READY,
// the child waits in pending and its standby stays silent.
func TestStandbyWaitsForItsDependencies(t *testing.T) {
	var baseStarts atomic.Int32
	base := spec("base", "ok")
	base.Settings = func(*table.SettingsInput) (proto.Message, error) {
		if baseStarts.Add(1) == 1 {
			return wrapperspb.String("ok"), nil
		}
		return wrapperspb.String("silent"), nil
	}
	r := start(t, []table.ChildSpec{base, withStandby(spec("top", "ok", "base"))}, standbyAfter(50*time.Millisecond))
	m := r.waitFor("top's standby", 30*time.Second, hasStandby("top"))
	standbyPid := m["top"].StandbyPid
	unix.Kill(m["base"].Pid, unix.SIGKILL)
	r.waitFor("base back, not READY", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["base"].Generation == 2 && m["base"].Status == StatusStarting
	})
	waitLog(t, r, "child output", "mode silent generation 2")
	unix.Kill(m["top"].Pid, unix.SIGKILL)
	r.waitFor("top's exit handled", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["top"].Generation != 1 || m["top"].Status == StatusPending
	})
	// The children call is served by the loop after every event queued
	// before it (the exit, the restart's timers due by then): a wrong loop
	// would have handed the standby its config by the time it answers.
	m, err := r.children(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m["top"].Status != StatusPending || m["top"].StandbyPid != standbyPid || m["top"].Generation != 1 {
		t.Errorf("top is %+v, want pending with its standby %d waiting", m["top"], standbyPid)
	}
	if got := logLines(r.log, "child output", "mode ok generation 2"); len(got) != 0 {
		t.Errorf("the standby got its config before its dependency was READY:\n%s", strings.Join(got, "\n"))
	}
}

// A standby whose process dies before it is used is replaced.
func TestDeadStandbyIsReplaced(t *testing.T) {
	r := start(t, []table.ChildSpec{withStandby(spec("only", "ok"))}, standbyAfter(50*time.Millisecond))
	m := r.waitFor("the standby", 30*time.Second, hasStandby("only"))
	dead := m["only"].StandbyPid
	unix.Kill(dead, unix.SIGKILL)
	m = r.waitFor("another standby", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["only"].StandbyPid != 0 && m["only"].StandbyPid != dead
	})
	if m["only"].Generation != 1 {
		t.Errorf("the child itself was restarted: %+v", m["only"])
	}
	if len(logLines(r.log, "standby exited before it was used", "child=only")) != 1 {
		t.Error("the standby's death was not logged")
	}
}

// A new computation hands the per-computation child's standby the
// computation's settings and id.
func TestNewComputationAdoptsTheStandby(t *testing.T) {
	runner := withStandby(spec("runner", "ok"))
	runner.Scope = table.PerComputation
	r := start(t, []table.ChildSpec{runner}, standbyAfter(50*time.Millisecond))
	m := r.waitFor("the standby", 30*time.Second, hasStandby("runner"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.sup.NewComputation(ctx, &cvms.ComputationRunReq{Id: "c1"}); err != nil {
		t.Fatal(err)
	}
	got := r.waitFor("the replacement READY", 30*time.Second, func(m map[string]ChildInfo) bool {
		return m["runner"].Generation == 2 && m["runner"].Status == StatusReady
	})
	if got["runner"].Pid != m["runner"].StandbyPid {
		t.Errorf("the new runner is pid %d, want the standby %d", got["runner"].Pid, m["runner"].StandbyPid)
	}
	waitLog(t, r, "child output", "mode ok generation 2 computation c1")
}
