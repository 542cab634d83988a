package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc"

	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/attest/atlsverify"
	"github.com/cvmd/cvmd/attest/verify"
)

// allowSimulatedEnv, set to true, lets aTLS accept evidence from simulated
// platforms (development VMs, `make run`); the default refuses it.
const allowSimulatedEnv = "CVM_ATTESTATION_ALLOW_SIMULATED"

// corimKeyEnv names PEM files (':'-separated) of keys a signed CoRIM policy
// must be signed by; allowUnsignedCoRIMEnv=true accepts an unsigned one
// (Cocos's CLI writes unsigned CoRIMs unless given --signing-key).
const (
	corimKeyEnv           = "CVM_CORIM_KEY"
	allowUnsignedCoRIMEnv = "CVM_ATTESTATION_ALLOW_UNSIGNED_CORIM"
	// tdxCollateralEnv and intelRootsEnv name the files TDX evidence is
	// verified with (as verify's --tdx-collateral and --intel-roots).
	tdxCollateralEnv = "CVM_TDX_COLLATERAL"
	intelRootsEnv    = "CVM_INTEL_ROOTS"
)

func boolEnv(getenv func(string) string, name string) (bool, error) {
	v := getenv(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &UsageError{fmt.Errorf("%s=%q: want true or false", name, v)}
	}
	return b, nil
}

// atlsDialOptions is THE hook where the attested-TLS client (attest/atls)
// plugs in: it returns the dial options (transport credentials and/or a
// context dialer) that make the connection attested TLS, verifying the
// agent's evidence against cfg.AttestationPolicy (and cfg.ServerCAs for
// maTLS, cfg.ClientCert/ClientKey for the client side).
//
// The aTLS exchange runs as gRPC transport credentials over whatever
// connection gRPC dials, so a test's Options.Dial works too. Every check is
// made (authenticator, binding, evidence against the policy); a failure
// names the check.
func atlsDialOptions(ctx context.Context, cfg *AgentConfig) ([]grpc.DialOption, error) {
	getenv := os.Getenv
	if o, ok := ctx.Value(optionsKey{}).(*Options); ok && o.Getenv != nil {
		getenv = o.Getenv
	}
	if cfg.AttestationPolicy == "" {
		return nil, &UsageError{fmt.Errorf("attested TLS needs an attestation policy file (AGENT_GRPC_ATTESTATION_POLICY, --attestation-policy)")}
	}
	allowUnsigned, err := boolEnv(getenv, allowUnsignedCoRIMEnv)
	if err != nil {
		return nil, err
	}
	var keys []string
	if k := getenv(corimKeyEnv); k != "" {
		keys = strings.Split(k, ":")
	}
	policy, err := loadPolicyFile(cfg.AttestationPolicy, keys, allowUnsigned)
	if err != nil {
		return nil, err
	}
	opts := verify.Options{Policy: policy}
	if opts.TDXCollateral, opts.IntelRoots, err = readTDXTrust(getenv(tdxCollateralEnv), getenv(intelRootsEnv)); err != nil {
		return nil, err
	}
	if opts.AllowSimulated, err = boolEnv(getenv, allowSimulatedEnv); err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13}
	if cfg.ServerCAs != "" {
		pem, err := os.ReadFile(cfg.ServerCAs)
		if err != nil {
			return nil, fmt.Errorf("reading server CA certificates: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server CA file %s holds no PEM certificate", cfg.ServerCAs)
		}
	}
	if cfg.ClientCert != "" {
		c, err := tls.LoadX509KeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	ac := &atls.ClientConfig{TLS: tc, VerifyEvidence: atlsverify.Policy(opts)}
	if cfg.RequestContext != "" {
		if ac.Context, err = hex.DecodeString(cfg.RequestContext); err != nil || len(ac.Context) == 0 || len(ac.Context) > 255 {
			return nil, &UsageError{fmt.Errorf("attestation request context %q: want 1 to 255 bytes in hex", cfg.RequestContext)}
		}
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(atls.NewCredentials(ac))}, nil
}
