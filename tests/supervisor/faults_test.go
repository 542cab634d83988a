package supervisor_test

import (
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
				if !strings.Contains(d.out.String(), tc.wantLog) {
					t.Errorf("log lacks %q", tc.wantLog)
				}
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
			out := d.out.String()
			if !strings.Contains(out, tc.wantLog) {
				t.Errorf("log lacks %q", tc.wantLog)
			}
			if !strings.Contains(out, "child failed: too many restarts") {
				t.Errorf("log lacks the failure")
			}
			if strings.Contains(out, "supervisor proper exited") {
				t.Errorf("the supervisor proper died")
			}
		})
	}
}
