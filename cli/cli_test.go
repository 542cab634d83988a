package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func runCLI(t *testing.T, o Options, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	o.Stdout, o.Stderr = &out, &errb
	if o.Getenv == nil {
		o.Getenv = func(string) string { return "" }
	}
	code = Run(context.Background(), args, o)
	return code, out.String(), errb.String()
}

func TestRegisterUnderParentAnyOrder(t *testing.T) {
	// A child registered before its parent still lands under it.
	Register("zz-test-group", func() *cobra.Command {
		return &cobra.Command{Use: "leaf", RunE: func(cmd *cobra.Command, _ []string) error {
			return IOOf(cmd).Print("leaf ran", map[string]string{"ran": "leaf"})
		}}
	})
	Register("", func() *cobra.Command { return &cobra.Command{Use: "zz-test-group", Short: "test group"} })
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"zz-test-group", "leaf"}, "leaf ran\n"},
		{[]string{"--json", "zz-test-group", "leaf"}, "{\"ran\":\"leaf\"}\n"},
	} {
		code, out, errs := runCLI(t, Options{}, tc.args...)
		if code != 0 || out != tc.want {
			t.Errorf("%v: code %d out %q err %q, want 0 %q", tc.args, code, out, errs, tc.want)
		}
	}
}

func TestUnknownCommandIsUsageError(t *testing.T) {
	code, _, errs := runCLI(t, Options{}, "no-such-command")
	if code != 2 || !strings.HasPrefix(errs, "cvm: unknown command") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("code %d stderr %q, want 2 and one line", code, errs)
	}
}
