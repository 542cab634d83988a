package supervisor_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBadChildren replaces the leaf child (ingress) by a stand-in that breaks
// the child contract; the supervisor must log it clearly, apply the restart
// policy (failed after more than 5 restarts in 10 s) and keep every other
// child and itself running.
func TestBadChildren(t *testing.T) {
	for _, tc := range []struct {
		mode    string
		extra   []string
		wantLog string
		// A child that fails slowly (1.5 s READY timeout each time) cannot
		// restart more than 5 times in 10 s once back-off grows: it is
		// retried with back-off forever instead of being marked failed.
		retried bool
	}{
		// A 60 s window: on a loaded machine a spawn can take seconds, and
		// six of them must still fall within the window.
		{"garbage", []string{"--restart-window", "60s"}, "garbage on control channel", false},
		{"silent", []string{"--ready-timeout", "1500ms"}, "never said READY", true},
		{"startfail", []string{"--restart-window", "60s"}, "the disk is on fire", false},
		{"crash", []string{"--restart-window", "60s"}, "exit status 3", false},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			d := startDevWith(t, false, append([]string{"--test-misbehave", "ingress=" + tc.mode}, tc.extra...)...)
			if tc.retried {
				st := d.waitAll(func(s *status) bool { return s.child("ingress").Restarts >= 2 }, 30*time.Second, "ingress restarted twice")
				for _, name := range childNames[:5] {
					if c := st.child(name); c.Status != "ready" || c.Generation != 1 {
						t.Errorf("%s disturbed by a bad ingress: %+v", name, c)
					}
				}
				d.waitLog(30*time.Second, fmt.Sprintf("%q", tc.wantLog), tc.wantLog)
				return
			}
			st := d.waitAll(func(s *status) bool { return s.child("ingress").Status == "failed" }, 60*time.Second, "ingress failed")
			for _, name := range childNames[:5] {
				if c := st.child(name); c.Status != "ready" || c.Generation != 1 {
					t.Errorf("%s disturbed by a bad ingress: %+v", name, c)
				}
			}
			if r := st.child("ingress").Restarts; r != 5 {
				t.Errorf("ingress restarted %d times before failing, want 5", r)
			}
			d.waitLog(30*time.Second, fmt.Sprintf("%q", tc.wantLog), tc.wantLog)
			d.waitLog(30*time.Second, "the failure", "child failed: too many restarts", "child=ingress ")
			if strings.Contains(d.out.String(), "supervisor proper exited") {
				t.Errorf("the supervisor proper died")
			}
		})
	}
}

// TestSlowChildrenStopInOrder: three dependency levels of children that
// ignore Stop and SIGTERM take each their grace and a SIGKILL; PID 1 waits
// for the supervisor proper to finish that orderly shutdown (before, it
// gave it 4 s and killed it halfway, leaving logfwd unstopped).
func TestSlowChildrenStopInOrder(t *testing.T) {
	d := startDev(t, "--test-misbehave", "ingress=stubborn,agent=stubborn,runner=stubborn")
	took, err := d.stop(60 * time.Second)
	if err != nil {
		t.Fatalf("exit: %v (after %v)", err, took)
	}
	out := d.out.String()
	if strings.Contains(out, "supervisor proper did not stop in time") {
		t.Errorf("PID 1 killed the supervisor proper during its shutdown (after %v)", took)
	}
	for _, name := range []string{"ingress", "agent", "runner"} {
		if !logHas(out, `msg="child did not stop in time; killing it"`, "child="+name+" ") {
			t.Errorf("%s was not killed after its grace", name)
		}
	}
	if !logHas(out, `msg="child stopped"`, "child=logfwd ") {
		t.Errorf("logfwd, stopped last, was not stopped in order")
	}
}

// logHas reports whether a line of the log has every one of parts.
func logHas(log string, parts ...string) bool {
	for _, l := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}
