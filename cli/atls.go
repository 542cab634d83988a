package cli

import (
	"context"
	"errors"

	"google.golang.org/grpc"
)

// atlsDialOptions is THE hook where the attested-TLS client (attest/atls)
// plugs in: it returns the dial options (transport credentials and/or a
// context dialer) that make the connection attested TLS, verifying the
// agent's evidence against cfg.AttestationPolicy (and cfg.ServerCAs for
// maTLS, cfg.ClientCert/ClientKey for the client side).
func atlsDialOptions(ctx context.Context, cfg *AgentConfig) ([]grpc.DialOption, error) {
	return nil, errors.New("attested TLS is not available in this build of cvm")
}
