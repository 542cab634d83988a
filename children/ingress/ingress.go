// Package ingress is the ingress child (`cvmd ingress`): the only way into
// the VM for the CLI. It accepts on the TCP listening socket the supervisor
// made on port 7002 (fd "listen"), terminates plaintext, TLS, mTLS, aTLS or
// maTLS as the computation's AgentConfig says, and splices each client
// connection onto one new connection to the agent (edge "to:agent"), which
// speaks HTTP/2 cleartext gRPC. Evidence for aTLS comes from the attestation
// child (edge "to:attestation").
//
// The ingress reads HTTP/2 frame headers only, to know which connections
// carry streams (admission, eviction and the idle timeouts favour those
// doing work); it does not parse, check or change frames, and does not
// authenticate requests: frame, header and message limits and the users'
// role signatures are the agent's. It has no network of its own and opens no
// socket. It is started per computation and stopped at its end; nothing
// survives between runs. ingress imports attest/atls, ipc and proto; only
// cmd/cvmd imports it.
package ingress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/ipc"
	attpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
)

// Main runs the ingress child.
func Main(ctx context.Context, env *child.Env) error {
	s := &config.IngressSettings{}
	if err := env.Settings(s); err != nil {
		return err
	}
	agent, err := env.Dialer("agent")
	if err != nil {
		return err
	}
	var evidence atls.EvidenceFunc
	if s.GetAttestedTls() {
		d, err := env.Dialer("attestation")
		if err != nil {
			return fmt.Errorf("ingress: attested_tls needs the attestation child: %w", err)
		}
		cc, err := ipc.GRPCClient(d)
		if err != nil {
			return err
		}
		defer cc.Close()
		evidence = AttestationEvidence(attpb.NewAttestationClient(cc), s.GetPlatformType())
	}
	cfg, err := ConfigFromSettings(s, evidence)
	if err != nil {
		return err
	}
	cfg.Backend = agent.Dial
	cfg.Log = env.Log
	f, err := env.File("listen")
	if err != nil {
		return err
	}
	ln, err := net.FileListener(f)
	f.Close() // FileListener dups
	if err != nil {
		return fmt.Errorf("ingress: fd %q is not a listening socket: %w", "listen", err)
	}
	if err := env.Ready(); err != nil {
		ln.Close()
		return err
	}
	env.Log.Info("ingress serving", "mode", cfg.Mode(), "addr", ln.Addr().String(), "computation", env.Config.GetComputationId())
	return New(*cfg).Run(ctx, ln)
}

// AttestationEvidence returns an evidence source that asks the attestation
// child for an EAT with the given report data and nonce.
func AttestationEvidence(c attpb.AttestationClient, platformType int32) atls.EvidenceFunc {
	return func(ctx context.Context, reportData [64]byte, nonce [32]byte) ([]byte, error) {
		res, err := c.Evidence(ctx, &attpb.EvidenceRequest{ReportData: reportData[:], Nonce: nonce[:], PlatformType: platformType})
		if err != nil {
			return nil, fmt.Errorf("asking the attestation child: %w", err)
		}
		if len(res.GetEatToken()) == 0 {
			return nil, fmt.Errorf("attestation child returned an empty token")
		}
		return res.GetEatToken(), nil
	}
}

// ConfigFromSettings validates s and builds the Server config (without
// Backend and Log). evidence is required when s asks for aTLS.
func ConfigFromSettings(s *config.IngressSettings, evidence atls.EvidenceFunc) (*Config, error) {
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	cfg := &Config{
		HandshakeTimeout:       ms(s.GetHandshakeTimeoutMs()),
		FirstRequestTimeout:    ms(s.GetFirstRequestTimeoutMs()),
		StreamlessTimeout:      ms(s.GetStreamlessTimeoutMs()),
		IdleTimeout:            ms(s.GetIdleTimeoutMs()),
		MaxConns:               int(s.GetMaxConnections()),
		MaxConnsPerSource:      int(s.GetMaxConnectionsPerSource()),
		MaxHandshakes:          int(s.GetMaxHandshakes()),
		MaxHandshakesPerSource: int(s.GetMaxHandshakesPerSource()),
		ShutdownGrace:          ms(s.GetShutdownGraceMs()),
	}
	if (s.GetCertFile() == "") != (s.GetKeyFile() == "") {
		return nil, fmt.Errorf("ingress: cert_file and key_file must be given together")
	}
	if s.GetServerCaFile() != "" {
		if _, err := certPool(s.GetServerCaFile(), "server_ca_file"); err != nil {
			return nil, err
		}
	}
	var id tls.Certificate
	if s.GetCertFile() != "" {
		certPEM, err := ReadPEMOrFile(s.GetCertFile())
		if err != nil {
			return nil, fmt.Errorf("ingress: cert_file: %w", err)
		}
		keyPEM, err := ReadPEMOrFile(s.GetKeyFile())
		if err != nil {
			return nil, fmt.Errorf("ingress: key_file: %w", err)
		}
		if id, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
			return nil, fmt.Errorf("ingress: cert_file and key_file: %w", err)
		}
	}
	switch {
	case s.GetAttestedTls():
		if evidence == nil {
			return nil, fmt.Errorf("ingress: attested_tls without an evidence source")
		}
		if len(id.Certificate) == 0 {
			var err error
			if id, err = atls.NewEphemeralIdentity(); err != nil {
				return nil, fmt.Errorf("ingress: making the aTLS certificate: %w", err)
			}
		} else if err := atls.CheckIdentity(id); err != nil {
			return nil, fmt.Errorf("ingress: cert_file for attested_tls: %w", err)
		}
		cfg.TLS = atls.ServerTLSConfig(id)
		cfg.ATLS = &atls.ServerConfig{Identity: id, Evidence: evidence}
	case len(id.Certificate) > 0:
		cfg.TLS = &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{id},
			NextProtos:   []string{"h2"},
		}
	}
	if s.GetClientCaFile() != "" {
		if cfg.TLS == nil {
			return nil, fmt.Errorf("ingress: client_ca_file needs cert_file and key_file or attested_tls")
		}
		pool, err := certPool(s.GetClientCaFile(), "client_ca_file")
		if err != nil {
			return nil, err
		}
		cfg.TLS.ClientCAs = pool
		cfg.TLS.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ReadPEMOrFile applies Cocos's rule: a value shorter than 1000 characters
// without a newline is a file path; anything else is the PEM itself.
func ReadPEMOrFile(v string) ([]byte, error) {
	if len(v) < 1000 && !strings.Contains(v, "\n") {
		return os.ReadFile(v)
	}
	return []byte(v), nil
}

func certPool(v, field string) (*x509.CertPool, error) {
	b, err := ReadPEMOrFile(v)
	if err != nil {
		return nil, fmt.Errorf("ingress: %s: %w", field, err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ingress: %s: certificate %d: %w", field, n, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("ingress: %s holds no PEM certificate", field)
	}
	return pool, nil
}
