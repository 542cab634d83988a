package manager

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// DefaultEnvFile is where Cocos's manager puts the guest's environment
// (its env_share, mounted at /etc/cocos).
const DefaultEnvFile = "/etc/cocos/environment"

// ReadEnvironment returns Cocos's guest variables: those of envFile
// (KEY=VALUE lines, # comments, an optional "export " and quotes; the last
// assignment wins; "" or a missing file has none), then the KEY=VALUE tokens
// of cmdline, the kernel command line, for Cocos's variables (AGENT_* and
// COCOS_*) and cvmd's own (CVMD_*), which win: the command line is measured, the file is not. A
// line of the file that is not KEY=VALUE is an error naming it. This is the
// one parser of the environment: the manager link (LoadConfig) and the
// egress allowlist both read it.
func ReadEnvironment(envFile, cmdline string) (map[string]string, error) {
	vars := map[string]string{}
	if envFile != "" {
		if err := readEnvFile(envFile, vars); err != nil {
			return nil, err
		}
	}
	for _, tok := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(tok, "="); ok && (strings.HasPrefix(k, "AGENT_") || strings.HasPrefix(k, "COCOS_") || strings.HasPrefix(k, "CVMD_")) {
			vars[k] = unquote(v)
		}
	}
	return vars, nil
}

func readEnvFile(file string, vars map[string]string) error {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("manager: reading %s: %w", file, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			return fmt.Errorf("manager: %s line %d: want KEY=VALUE, got %.64q", file, n, line)
		}
		vars[strings.TrimSpace(k)] = unquote(strings.TrimSpace(v))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("manager: reading %s: %w", file, err)
	}
	return nil
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		if u, err := strconv.Unquote(`"` + v[1:len(v)-1] + `"`); err == nil {
			return u
		}
		return v[1 : len(v)-1]
	}
	return v
}

// GuestEnvironment returns a function that reads the guest's environment
// each time it is called, and says where from: in the VM, envFile
// (DefaultEnvFile when "") and /proc/cmdline; in dev mode, envFile alone
// (a workstation's command line is not the guest's).
func GuestEnvironment(envFile string, dev bool) func() (vars map[string]string, source string, err error) {
	return func() (map[string]string, string, error) {
		file, cmdline := envFile, ""
		if !dev {
			if file == "" {
				file = DefaultEnvFile
			}
			if b, err := os.ReadFile("/proc/cmdline"); err == nil {
				cmdline = string(b)
			}
		}
		vars, err := ReadEnvironment(file, cmdline)
		return vars, file, err
	}
}
