package cli

import "github.com/spf13/cobra"

func init() { Register("", newAttestationCmd) }

func newAttestationCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "attestation",
		Short: "Get and verify attestation evidence from the agent",
		Long: `attestation gets evidence (an EAT token) from the agent's platform and
verifies it. The agent's Attestation RPC is unauthenticated, as in Cocos.`,
	}
}
