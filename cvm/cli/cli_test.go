package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	// Two levels below a parent nobody registers.
	Register("zz-test-a zz-test-b", func() *cobra.Command {
		return &cobra.Command{Use: "deep", RunE: func(cmd *cobra.Command, _ []string) error { return IOOf(cmd).Print("deep ran", nil) }}
	})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"zz-test-group", "leaf"}, "leaf ran\n"},
		{[]string{"--json", "zz-test-group", "leaf"}, "{\"ran\":\"leaf\"}\n"},
		{[]string{"zz-test-a", "zz-test-b", "deep"}, "deep ran\n"},
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

func TestEveryCommandHasHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || strings.HasPrefix(c.Name(), "zz-test") {
			return
		}
		if c.Short == "" {
			t.Errorf("%q has no Short help", c.CommandPath())
		}
		if c.Runnable() && c.Long == "" {
			t.Errorf("%q has no Long help", c.CommandPath())
		}
		args := append(strings.Fields(c.CommandPath())[1:], "--help")
		code, out, errs := runCLI(t, Options{}, args...)
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: exit %d, out %q, err %q", args, code, out, errs)
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewRoot(&Options{}))
}

func TestKeysAndChecksumOffline(t *testing.T) {
	dir := t.TempDir()
	for _, k := range []string{"rsa", "ecdsa", "ed25519"} {
		d := filepath.Join(dir, k)
		os.Mkdir(d, 0o755)
		if code, _, errs := runCLI(t, Options{}, "keys", "-k", k, "--dir", d); code != 0 {
			t.Fatalf("keys %s: %s", k, errs)
		}
		if code, _, errs := runCLI(t, Options{}, "keys", "-k", k, "--dir", d); code != 1 || !strings.Contains(errs, "file exists") {
			t.Fatalf("keys %s over existing files: %d %s", k, code, errs)
		}
	}
	if code, _, errs := runCLI(t, Options{}, "keys", "-k", "dsa"); code != 2 || !strings.Contains(errs, `key type "dsa"`) {
		t.Fatalf("bad key type: %d %s", code, errs)
	}
	f := filepath.Join(dir, "abc")
	os.WriteFile(f, []byte("abc"), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"checksum", f}, "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532\n"},
		{[]string{"checksum", "-b", f}, "Ophdp0/iJbIEXBcta9OQvYVfCG4+nVJbRr/iRRFDFTI=\n"},
		{[]string{"--json", "checksum", f}, `{"path":"` + f + `","sha3_256":"3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"}` + "\n"},
	}
	for _, tc := range tests {
		code, out, errs := runCLI(t, Options{}, tc.args...)
		if code != 0 || out != tc.want {
			t.Errorf("%v: %d %q %q, want %q", tc.args, code, out, errs, tc.want)
		}
	}
	if code, _, errs := runCLI(t, Options{}, "checksum", "-m", f); code != 1 || !strings.Contains(errs, "manifest: invalid") {
		t.Errorf("checksum of a non-manifest: %d %s", code, errs)
	}
}

func TestAgentConfigFromEnvAndFlags(t *testing.T) {
	env := map[string]string{"AGENT_GRPC_URL": "env:1", "AGENT_GRPC_SERVER_CA_CERTS": "/ca.pem", "AGENT_GRPC_ATTESTED_TLS": "false"}
	var got *AgentConfig
	Register("zz-test-cfg", func() *cobra.Command {
		return &cobra.Command{Use: "show", RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			got, err = LoadAgentConfig(cmd)
			return err
		}}
	})
	o := Options{Getenv: func(k string) string { return env[k] }}
	if code, _, errs := runCLI(t, o, "zz-test-cfg", "show"); code != 0 || got.URL != "env:1" || got.Security() != "TLS" || got.Timeout != 60*time.Second {
		t.Fatalf("env: %d %s %+v", code, errs, got)
	}
	if code, _, errs := runCLI(t, o, "--agent-url", "flag:2", "--attested-tls", "zz-test-cfg", "show"); code != 0 || got.URL != "flag:2" || got.Security() != "maTLS" {
		t.Fatalf("flags: %d %s %+v", code, errs, got)
	}
	if code, _, errs := runCLI(t, o, "--client-cert", "c.pem", "zz-test-cfg", "show"); code != 2 || !strings.Contains(errs, "given together") {
		t.Fatalf("cert without key: %d %s", code, errs)
	}
}
