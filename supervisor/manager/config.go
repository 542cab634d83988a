package manager

import (
	"fmt"
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

// LoadConfig reads Cocos's variables with ReadEnvironment (envFile, then
// the kernel command line text cmdline, which wins) and makes the link's
// Config. It returns ErrNoConfig when no URL is set.
func LoadConfig(envFile, cmdline string) (Config, error) {
	vars, err := ReadEnvironment(envFile, cmdline)
	if err != nil {
		return Config{}, err
	}
	return configFrom(vars)
}

func configFrom(vars map[string]string) (Config, error) {
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
