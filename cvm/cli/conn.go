package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cvmd/cvmd/proto/agent"
)

// AgentConfig is how to reach the agent. Each field comes from its Cocos
// environment variable, overridden by its flag.
type AgentConfig struct {
	URL               string        // AGENT_GRPC_URL, --agent-url; default localhost:7001
	Timeout           time.Duration // AGENT_GRPC_TIMEOUT, --timeout; default 60s
	ClientCert        string        // AGENT_GRPC_CLIENT_CERT, --client-cert
	ClientKey         string        // AGENT_GRPC_CLIENT_KEY, --client-key
	ServerCAs         string        // AGENT_GRPC_SERVER_CA_CERTS, --server-ca
	AttestedTLS       bool          // AGENT_GRPC_ATTESTED_TLS, --attested-tls
	AttestationPolicy string        // AGENT_GRPC_ATTESTATION_POLICY, --attestation-policy
	// RequestContext is the hex EA certificate_request_context for aTLS
	// (AGENT_GRPC_ATTESTATION_REQUEST_CONTEXT); "" means random.
	RequestContext string
	// ProductName is AGENT_GRPC_PRODUCT_NAME (SEV-SNP product, e.g. Milan).
	ProductName string
}

// Security names the transport security a config selects, in Cocos's words.
func (c *AgentConfig) Security() string {
	switch {
	case c.AttestedTLS && c.ServerCAs != "":
		return "maTLS"
	case c.AttestedTLS:
		return "aTLS"
	case c.ServerCAs != "" && c.ClientCert != "":
		return "mTLS"
	case c.ServerCAs != "":
		return "TLS"
	default:
		return "plaintext"
	}
}

var connFlags = []struct{ flag, env, def, usage string }{
	{"agent-url", "AGENT_GRPC_URL", "localhost:7001", "agent address, host:port or unix:///path"},
	{"timeout", "AGENT_GRPC_TIMEOUT", "60s", "agent connection timeout"},
	{"client-cert", "AGENT_GRPC_CLIENT_CERT", "", "client certificate file (mTLS)"},
	{"client-key", "AGENT_GRPC_CLIENT_KEY", "", "client private key file (mTLS)"},
	{"server-ca", "AGENT_GRPC_SERVER_CA_CERTS", "", "CA certificates file that signs the agent's certificate (TLS)"},
	{"attested-tls", "AGENT_GRPC_ATTESTED_TLS", "false", "use attested TLS"},
	{"attestation-policy", "AGENT_GRPC_ATTESTATION_POLICY", "", "attestation policy file (aTLS)"},
	{"attestation-request-context", "AGENT_GRPC_ATTESTATION_REQUEST_CONTEXT", "", "hex certificate_request_context for aTLS (default random)"},
	{"product-name", "AGENT_GRPC_PRODUCT_NAME", "Milan", "SEV-SNP product name"},
}

func addConnFlags(root *cobra.Command) {
	for _, f := range connFlags {
		root.PersistentFlags().String(f.flag, "", fmt.Sprintf("%s (env %s, default %q)", f.usage, f.env, f.def))
	}
	root.PersistentFlags().Lookup("attested-tls").NoOptDefVal = "true"
}

// LoadAgentConfig reads the agent connection settings of cmd: flag, else
// environment variable, else default.
func LoadAgentConfig(cmd *cobra.Command) (*AgentConfig, error) {
	o := optionsOf(cmd)
	get := func(flag string) string {
		if f := cmd.Flags().Lookup(flag); f != nil && f.Changed {
			return f.Value.String()
		}
		for _, cf := range connFlags {
			if cf.flag == flag {
				if v := o.Getenv(cf.env); v != "" {
					return v
				}
				return cf.def
			}
		}
		return ""
	}
	c := &AgentConfig{
		URL:               get("agent-url"),
		ClientCert:        get("client-cert"),
		ClientKey:         get("client-key"),
		ServerCAs:         get("server-ca"),
		AttestationPolicy: get("attestation-policy"),
		RequestContext:    get("attestation-request-context"),
		ProductName:       get("product-name"),
	}
	var err error
	if c.Timeout, err = time.ParseDuration(get("timeout")); err != nil {
		return nil, &UsageError{fmt.Errorf("agent timeout %q: %v", get("timeout"), err)}
	}
	if c.AttestedTLS, err = strconv.ParseBool(get("attested-tls")); err != nil {
		return nil, &UsageError{fmt.Errorf("attested TLS setting %q: want true or false", get("attested-tls"))}
	}
	if (c.ClientCert == "") != (c.ClientKey == "") {
		return nil, &UsageError{fmt.Errorf("client certificate and client key must be given together")}
	}
	return c, nil
}

// Agent is a connection to the agent and its AgentService client.
type Agent struct {
	agent.AgentServiceClient
	Conn   *grpc.ClientConn
	Config *AgentConfig
}

// Close closes the connection.
func (a *Agent) Close() error { return a.Conn.Close() }

// maxMsg bounds the messages we accept: chunks are ≤ 1 MiB plus framing.
const maxMsg = 8 << 20

// DialAgent connects to the agent that cmd's flags and environment name and,
// for plaintext and mTLS like Cocos's CLI, checks that its health service
// reports "agent" SERVING.
func DialAgent(cmd *cobra.Command) (*Agent, error) {
	cfg, err := LoadAgentConfig(cmd)
	if err != nil {
		return nil, err
	}
	o := optionsOf(cmd)
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg)),
		// Large windows: one upload stream should not stall on flow control.
		grpc.WithInitialWindowSize(8 << 20),
		grpc.WithInitialConnWindowSize(16 << 20),
		grpc.WithWriteBufferSize(1 << 20),
		grpc.WithReadBufferSize(1 << 20),
	}
	if o.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return o.Dial(ctx) }))
	}
	sec, err := securityOptions(cmd.Context(), cfg)
	if err != nil {
		return nil, err
	}
	opts = append(opts, sec...)
	target := cfg.URL
	if o.Dial != nil {
		target = "passthrough:///" + cfg.URL
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to agent at %s: %w", cfg.URL, err)
	}
	a := &Agent{AgentServiceClient: agent.NewAgentServiceClient(conn), Conn: conn, Config: cfg}
	if s := cfg.Security(); s == "plaintext" || s == "mTLS" {
		ctx, cancel := context.WithTimeout(cmd.Context(), cfg.Timeout)
		defer cancel()
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "agent"}, grpc.WaitForReady(true))
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("connecting to agent at %s (%s): %v", cfg.URL, s, statusText(err))
		}
		if res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			conn.Close()
			return nil, fmt.Errorf("agent at %s is %s, not serving", cfg.URL, res.GetStatus())
		}
	}
	return a, nil
}

// securityOptions returns the transport credentials cfg selects.
func securityOptions(ctx context.Context, cfg *AgentConfig) ([]grpc.DialOption, error) {
	if cfg.AttestedTLS {
		return atlsDialOptions(ctx, cfg)
	}
	if cfg.ServerCAs == "" {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	tc, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, nil
}

// tlsConfig builds the TLS (or mTLS, with a client certificate) settings.
func tlsConfig(cfg *AgentConfig) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.ServerCAs != "" {
		pem, err := os.ReadFile(cfg.ServerCAs)
		if err != nil {
			return nil, fmt.Errorf("reading server CA certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server CA certificates %s: no PEM certificate found", cfg.ServerCAs)
		}
		tc.RootCAs = pool
	}
	if cfg.ClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate %s: %w", cfg.ClientCert, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
