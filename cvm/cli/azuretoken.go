package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cvmd/cvmd/attest/maa"
	"github.com/cvmd/cvmd/attest/verify"
)

// azureTokenVerify is how `attestation get azure-token` checks MAA's JWT.
type azureTokenVerify struct {
	maaURL, jwksFile string
	skew             time.Duration
	noVerify         bool
}

func (v *azureTokenVerify) flags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&v.maaURL, "maa", maa.DefaultURL, "azure-token: the MAA instance that must have issued the token (its issuer; its keys at <maa>/certs unless --jwks)")
	f.StringVar(&v.jwksFile, "jwks", "", "azure-token: MAA's signing keys (a JWKS file) instead of fetching <maa>/certs")
	f.DurationVar(&v.skew, "clock-skew", verify.DefaultClockSkew, "azure-token: tolerated clock difference for the token's iat, nbf and exp")
	f.BoolVar(&v.noVerify, "no-verify", false, "azure-token: save the token without checking it (as Cocos's CLI)")
}

// check verifies tok and returns its claims; nil claims and no error with
// --no-verify.
func (v *azureTokenVerify) check(ctx context.Context, o IO, tok string, nonce []byte) (map[string]any, error) {
	if v.noVerify {
		fmt.Fprintln(o.Err, "warning: the Azure token was not verified (--no-verify)")
		return nil, nil
	}
	c := &maa.Client{URL: v.maaURL}
	var jwks []byte
	var err error
	if v.jwksFile != "" {
		jwks, err = os.ReadFile(v.jwksFile)
	} else {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		jwks, err = c.FetchJWKS(fctx)
		cancel()
	}
	if err != nil {
		return nil, fmt.Errorf("azure token: MAA's signing keys: %w", err)
	}
	cl, err := c.Validate(tok, jwks, time.Now(), v.skew)
	if err != nil {
		return nil, fmt.Errorf("azure token refused (not saved): %w", err)
	}
	if err := cl.CheckUserData(nonce); err != nil {
		return nil, fmt.Errorf("azure token refused (not saved): %w", err)
	}
	return cl.All, nil
}
