package cli

import (
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	agentpb "github.com/cvmd/cvmd/proto/agent"
)

func init() { Register("attestation", newAttestationGetCmd) }

// platformTypes maps the CLI's names to the agent wire numbering.
var platformTypes = map[string]int32{"snp": 0, "vtpm": 1, "snp-vtpm": 2, "azure": 3, "azure-token": 3, "tdx": 4}

func newAttestationGetCmd() *cobra.Command {
	var tee, vtpm, token, out string
	var tv azureTokenVerify
	c := &cobra.Command{
		Use:   "get <snp|vtpm|snp-vtpm|tdx|azure|azure-token>",
		Short: "Download attestation evidence (an EAT token) from the agent",
		Long: `get asks the agent for evidence of the given platform type, bound to the
nonces given in hex: --tee (up to 64 bytes; snp, snp-vtpm and tdx need it) and
--vtpm (up to 32 bytes; vtpm, snp-vtpm and azure need it). Unlike Cocos's CLI,
the --tee nonce is sent for tdx too, so a TDX quote is bound to it. azure is
the evidence of an Azure confidential VM (the paravisor's SEV-SNP or TDX
report in the vTPM, and a vTPM quote). The token is written to --output
(default attestation.bin).

azure-token asks for a Microsoft Azure Attestation token over --token (up
to 32 bytes; Azure TDX confidential VMs): the agent has MAA (AGENT_MAA_URL
in the VM's environment) check the VM's evidence. Unlike Cocos's CLI, the
JWT is verified before it is saved (default azure_attest_token.jwt): its
RS256 signature by a key of --jwks (a file) or of <--maa>/certs (fetched),
its issuer (--maa), its time claims (--clock-skew) and that its runtime
claims carry the user data of this nonce. --no-verify saves it unchecked.`,
		Example: `  cvm attestation get snp-vtpm --tee $(openssl rand -hex 64) --vtpm $(openssl rand -hex 32)`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			typ, ok := platformTypes[a[0]]
			if !ok {
				return &UsageError{fmt.Errorf("attestation type %q: want snp, vtpm, snp-vtpm, tdx, azure or azure-token", a[0])}
			}
			teeB, err := hexArg("tee", tee, 64)
			if err != nil {
				return err
			}
			vtpmB, err := hexArg("vtpm", vtpm, 32)
			if err != nil {
				return err
			}
			tokB, err := hexArg("token", token, 32)
			if err != nil {
				return err
			}
			needTee, needVTPM := typ == 0 || typ == 2 || typ == 4, typ == 1 || typ == 2 || a[0] == "azure"
			if needTee && teeB == nil {
				return &UsageError{fmt.Errorf("%s evidence needs --tee", a[0])}
			}
			if needVTPM && vtpmB == nil {
				return &UsageError{fmt.Errorf("%s evidence needs --vtpm", a[0])}
			}
			ag, err := DialAgent(cmd)
			if err != nil {
				return err
			}
			defer ag.Close()
			o := IOOf(cmd)
			if a[0] == "azure-token" {
				res, err := ag.AzureAttestationToken(cmd.Context(), &agentpb.AttestationTokenRequest{TokenNonce: tokB, Type: typ})
				if err != nil {
					return fmt.Errorf("getting Azure token: %s", statusText(err))
				}
				claims, err := tv.check(cmd.Context(), o, string(res.GetFile()), tokB)
				if err != nil {
					return err
				}
				if out == "" {
					out = "azure_attest_token.jwt"
				}
				if err := os.WriteFile(out, res.GetFile(), 0o644); err != nil {
					return err
				}
				return o.Print("Azure token saved to "+out, map[string]any{"file": out, "bytes": len(res.GetFile()), "verified": claims != nil, "claims": claims})
			}
			if out == "" {
				out = "attestation.bin"
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			n, err := fetchEvidence(cmd, ag, &agentpb.AttestationRequest{TeeNonce: teeB, VtpmNonce: vtpmB, Type: typ}, f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(out)
				return err
			}
			return o.Print(fmt.Sprintf("attestation saved to %s (%d bytes)", out, n), map[string]any{"file": out, "bytes": n})
		},
	}
	c.Flags().StringVar(&tee, "tee", "", "TEE report data nonce, hex, up to 64 bytes")
	c.Flags().StringVar(&vtpm, "vtpm", "", "vTPM quote nonce, hex, up to 32 bytes")
	c.Flags().StringVar(&token, "token", "", "Azure token nonce, hex, up to 32 bytes")
	c.Flags().StringVarP(&out, "output", "o", "", "output file (default attestation.bin)")
	tv.flags(c)
	return c
}

// fetchEvidence streams the agent's answer to req (an EAT token) into w.
func fetchEvidence(cmd *cobra.Command, ag *Agent, req *agentpb.AttestationRequest, w io.Writer) (int64, error) {
	stream, err := ag.Attestation(cmd.Context(), req)
	if err != nil {
		return 0, fmt.Errorf("getting attestation: %s", statusText(err))
	}
	n, err := recvFile(stream, w, IOOf(cmd), "attestation", func() ([]byte, error) {
		m, err := stream.Recv()
		return m.GetFile(), err
	})
	if err != nil {
		return n, fmt.Errorf("getting attestation: %s", statusText(err))
	}
	return n, nil
}

func hexArg(name, v string, max int) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b, err := hex.DecodeString(v)
	if err != nil {
		return nil, &UsageError{fmt.Errorf("--%s is not hex: %v", name, err)}
	}
	if len(b) > max {
		return nil, &UsageError{fmt.Errorf("--%s has %d bytes, at most %d", name, len(b), max)}
	}
	return b, nil
}
