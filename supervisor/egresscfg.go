package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cvmd/cvmd/supervisor/manager"
)

// EgressAllowlistVar is the Cocos environment file variable holding the
// egress allowlist (syntax in docs/ingress-egress.md).
const EgressAllowlistVar = "COCOS_EGRESS_ALLOWLIST"

// egressAllowlist returns the entries of COCOS_EGRESS_ALLOWLIST: from the
// environment file (--env, else /etc/cocos/environment in the VM), then, in
// the VM, from the kernel command line, which wins (it is measured, the file
// is not). It is read each time the egress starts. Errors are logged and
// give an empty list: the egress then denies everything.
func (s *Supervisor) egressAllowlist() []string {
	env := s.cfg.EnvFile
	cmdline := ""
	if !s.cfg.Dev {
		if env == "" {
			env = manager.DefaultEnvFile
		}
		if b, err := os.ReadFile("/proc/cmdline"); err == nil {
			cmdline = string(b)
		}
	}
	v, err := envVar(env, EgressAllowlistVar)
	if err != nil {
		s.log.Error("egress allowlist not read: the egress denies everything", "env", env, "err", err)
		return nil
	}
	for _, tok := range strings.Fields(cmdline) {
		if k, val, ok := strings.Cut(tok, "="); ok && k == EgressAllowlistVar {
			v = unquoteEnv(val)
		}
	}
	entries := splitAllowlist(v)
	if len(entries) == 0 {
		s.log.Info("egress allowlist empty: the egress denies everything", "env", env)
		return nil
	}
	s.log.Info("egress allowlist", "entries", len(entries), "allow", strings.Join(entries, " "))
	return entries
}

// splitAllowlist splits a COCOS_EGRESS_ALLOWLIST value at commas and white
// space (the egress checks each entry).
func splitAllowlist(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
}

// envVar returns the value of key in a Cocos environment file (KEY=VALUE
// lines, # comments, optional "export " and quotes; the last assignment
// wins). A missing file or key gives "".
func envVar(file, key string) (string, error) {
	if file == "" {
		return "", nil
	}
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("supervisor: reading %s: %w", file, err)
	}
	defer f.Close()
	v := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, val, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if ok && strings.TrimSpace(k) == key {
			v = unquoteEnv(strings.TrimSpace(val))
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("supervisor: reading %s: %w", file, err)
	}
	return v, nil
}

func unquoteEnv(v string) string {
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		if u, err := strconv.Unquote(`"` + v[1:len(v)-1] + `"`); err == nil {
			return u
		}
		return v[1 : len(v)-1]
	}
	return v
}
