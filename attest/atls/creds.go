package atls

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
)

// AuthInfo is what gRPC learns about an aTLS connection.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Result *Result
}

// AuthType returns "atls".
func (AuthInfo) AuthType() string { return "atls" }

type transportCreds struct {
	cfg *ClientConfig
}

// NewCredentials returns gRPC transport credentials that run the aTLS
// client exchange over whatever connection gRPC dialed (TCP, or a test's
// socketpair). The wire is the same as Cocos's insecure-credentials-plus-
// dialer arrangement: TLS 1.3, the authenticator exchange, then HTTP/2.
func NewCredentials(cfg *ClientConfig) credentials.TransportCredentials {
	return &transportCreds{cfg: cfg}
}

func (c *transportCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	host, _, err := net.SplitHostPort(authority)
	if err != nil {
		host = authority
	}
	conn, res, err := Client(ctx, raw, host, c.cfg)
	if err != nil {
		return nil, nil, err
	}
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Result: res}, nil
}

func (c *transportCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, fmt.Errorf("atls: these credentials are for clients; servers use Serve")
}

func (c *transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "atls"}
}

func (c *transportCreds) Clone() credentials.TransportCredentials {
	cc := *c.cfg
	return &transportCreds{cfg: &cc}
}

func (c *transportCreds) OverrideServerName(string) error { return nil }
