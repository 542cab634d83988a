package manager

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is how to reach the manager. LoadConfig fills it from Cocos's
// variables; the tuning fields have useful zero values.
type Config struct {
	URL            string // AGENT_CVM_GRPC_URL, host:port of the CVMS server
	CVMID          string // AGENT_CVM_ID, sent as "job-id" metadata when non-empty
	ServerCAFile   string // AGENT_CVM_GRPC_SERVER_CA_CERTS: non-empty ⇒ TLS
	ClientCertFile string // AGENT_CVM_GRPC_CLIENT_CERT: with the key ⇒ mTLS
	ClientKeyFile  string // AGENT_CVM_GRPC_CLIENT_KEY

	// MaxRunReqBytes caps one reassembled runReqChunks request. 0 = 16 MiB.
	MaxRunReqBytes int
	// ChunkTimeout drops a partial chunked request with no new chunk for
	// this long. 0 = 30 s (Cocos's value).
	ChunkTimeout time.Duration
	// CommitDelay is how long a record must have been sent on a healthy log
	// stream before logfwd may delete it. 0 = 1 s.
	CommitDelay time.Duration
	// MinBackoff and MaxBackoff bound the reconnect back-off (exponential
	// with jitter). 0 = 100 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
}

func (c *Config) fill() {
	if c.MaxRunReqBytes <= 0 {
		c.MaxRunReqBytes = 16 << 20
	}
	if c.ChunkTimeout <= 0 {
		c.ChunkTimeout = 30 * time.Second
	}
	if c.CommitDelay <= 0 {
		c.CommitDelay = time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
}

// Cocos's environment variable names.
const (
	envURL        = "AGENT_CVM_GRPC_URL"
	envID         = "AGENT_CVM_ID"
	envServerCA   = "AGENT_CVM_GRPC_SERVER_CA_CERTS"
	envClientCert = "AGENT_CVM_GRPC_CLIENT_CERT"
	envClientKey  = "AGENT_CVM_GRPC_CLIENT_KEY"
)

// DefaultEnvFile is where Cocos's manager puts the guest's environment.
const DefaultEnvFile = "/etc/cocos/environment"

// LoadConfig reads Cocos's variables from envFile (KEY=VALUE lines, # comments,
// optional quotes; a missing file is not an error) and then from the kernel
// command line text cmdline, whose AGENT_* tokens win: the command line is
// measured, the file is not. It returns ErrNoConfig when no URL is set.
func LoadConfig(envFile, cmdline string) (Config, error) {
	vars := map[string]string{}
	if envFile != "" {
		f, err := os.Open(envFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return Config{}, fmt.Errorf("manager: reading %s: %w", envFile, err)
		default:
			defer f.Close()
			sc := bufio.NewScanner(f)
			n := 0
			for sc.Scan() {
				n++
				line := strings.TrimSpace(sc.Text())
				if line == "" || strings.HasPrefix(line, "#") {
					continue
				}
				line = strings.TrimPrefix(line, "export ")
				k, v, ok := strings.Cut(line, "=")
				if !ok {
					return Config{}, fmt.Errorf("manager: %s line %d: want KEY=VALUE, got %q", envFile, n, line)
				}
				vars[strings.TrimSpace(k)] = unquote(strings.TrimSpace(v))
			}
			if err := sc.Err(); err != nil {
				return Config{}, fmt.Errorf("manager: reading %s: %w", envFile, err)
			}
		}
	}
	for _, tok := range strings.Fields(cmdline) {
		if k, v, ok := strings.Cut(tok, "="); ok && strings.HasPrefix(k, "AGENT_") {
			vars[k] = unquote(v)
		}
	}
	c := Config{
		URL: vars[envURL], CVMID: vars[envID], ServerCAFile: vars[envServerCA],
		ClientCertFile: vars[envClientCert], ClientKeyFile: vars[envClientKey],
	}
	if c.URL == "" {
		return c, ErrNoConfig
	}
	if (c.ClientCertFile == "") != (c.ClientKeyFile == "") {
		return c, fmt.Errorf("manager: %s and %s must be set together", envClientCert, envClientKey)
	}
	return c, nil
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
