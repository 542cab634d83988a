package runner_test

import (
	"strings"
	"testing"
)

func TestBinAddition(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "add"), 0o600)
	resp := w.run(t, "bin", "--a", "100", "--b", "20")
	if resp.GetError() != "" || resp.GetExitCode() != 0 {
		t.Fatalf("run failed: %q (exit %d)\nlogs:\n%s", resp.GetError(), resp.GetExitCode(), w.rec.all())
	}
	if got := w.result(t, "result.txt"); got != "120" {
		t.Errorf("result.txt = %q, want 120", got)
	}
	if !w.rec.has("stdout", "sum 120") {
		t.Errorf("stdout not forwarded; logs:\n%s", w.rec.all())
	}
	if !w.rec.has("stderr", "adding 100 and 20") {
		t.Errorf("stderr not forwarded; logs:\n%s", w.rec.all())
	}
	var warned bool
	for _, e := range w.rec.events {
		if strings.HasPrefix(e, "AlgorithmRun/Warning") && strings.Contains(e, "adding 100 and 20") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no AlgorithmRun/Warning event for stderr; events: %v", w.rec.events)
	}
}
