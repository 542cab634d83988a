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
	}{
		{"garbage", nil, "garbage on control channel"},
		{"silent", []string{"--ready-timeout", "1500ms"}, "never said READY"},
		{"startfail", nil, "the disk is on fire"},
		{"crash", nil, "exit status 3"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			d := startDevWith(t, false, append([]string{"--test-misbehave", "ingress=" + tc.mode}, tc.extra...)...)
			st := d.waitAll(func(s *status) bool { return s.child("ingress").Status == "failed" }, 30*time.Second, "ingress failed")
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
