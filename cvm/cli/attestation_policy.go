package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/go-sev-guest/proto/check"
	tdxcheck "github.com/google/go-tdx-guest/proto/checkconfig"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/verify"
)

func init() { Register("attestation", newAttestationPolicyCmd) }

func newAttestationPolicyCmd() *cobra.Command {
	var bundlePath, out, tdxCollateral, intelRoots string
	var pcrs []int
	var allowSim bool
	c := &cobra.Command{
		Use:   "policy [token-file]",
		Short: "Write a policy that pins what a verified token shows (trust on first use)",
		Long: `policy verifies a token (default attestation.bin) as "verify" does without a
policy, then writes a policy file pinning what it showed: the SNP guest
policy, launch measurement, reported TCB, guest SVN, VMPL and host data; the
TDX MRTD, RTMRs, MRSEAM, attributes, XFAM and owner/config registers; the
TPM attestation key; the child table hash of the measurement log; and the
SHA-256 PCRs given with --pcr (default 0–9). Use it only with a token you
obtained from a VM you trust: it pins that VM, it does not judge it.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			file := "attestation.bin"
			if len(a) == 1 {
				file = a[0]
			}
			tok, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("reading token: %w", err)
			}
			o := verify.Options{AllowSimulated: allowSim, Policy: &verify.Policy{}}
			// Pinning what a token showed does not need it to be fresh:
			// check it as of its own issue time.
			if _, c, err := eat.Decode(tok); err == nil {
				o.Now = time.Unix(c.IssuedAt, 0)
			}
			if bundlePath != "" {
				if o.AMDBundle, err = os.ReadFile(bundlePath); err != nil {
					return fmt.Errorf("reading AMD bundle: %w", err)
				}
			}
			if o.TDXCollateral, o.IntelRoots, err = readTDXTrust(tdxCollateral, intelRoots); err != nil {
				return err
			}
			// A vTPM-only token has no hardware root: pin the AK it shows.
			if ak, err := decodeAK(tok); err == nil && ak != "" {
				o.Policy.CVMD.TrustedAKSHA256 = []string{ak}
			}
			r, err := verify.Token(tok, o)
			if err != nil {
				return err
			}
			doc := map[string]any{}
			if rep := r.SNP; rep != nil {
				p := &check.Policy{
					Policy: rep.GetPolicy(), Measurement: rep.GetMeasurement(), MinimumTcb: rep.GetReportedTcb(),
					MinimumGuestSvn: rep.GetGuestSvn(), Vmpl: wrapperspb.UInt32(rep.GetVmpl()), HostData: rep.GetHostData(),
				}
				b, err := protojson.Marshal(p)
				if err != nil {
					return err
				}
				doc["policy"] = json.RawMessage(b)
			}
			if q := r.TDXQuote; q != nil {
				b := q.GetTdQuoteBody()
				p := &tdxcheck.Policy{TdQuoteBodyPolicy: &tdxcheck.TDQuoteBodyPolicy{
					MrTd: b.GetMrTd(), Rtmrs: b.GetRtmrs(), MrSeam: b.GetMrSeam(), TdAttributes: b.GetTdAttributes(), Xfam: b.GetXfam(),
					MrConfigId: b.GetMrConfigId(), MrOwner: b.GetMrOwner(), MrOwnerConfig: b.GetMrOwnerConfig(),
				}}
				b2, err := protojson.Marshal(p)
				if err != nil {
					return err
				}
				doc["tdx"] = json.RawMessage(b2)
			}
			cv := verify.CVMDPolicy{}
			if r.TPM != nil {
				if r.Platform == attest.VTPM {
					ak := sha256.Sum256(r.TPM.GetAkPub())
					cv.TrustedAKSHA256 = []string{hex.EncodeToString(ak[:])}
				}
				vals := map[string]string{}
				for _, i := range pcrs {
					if v, ok := r.PCRs[uint32(i)]; ok {
						vals[strconv.Itoa(i)] = hex.EncodeToString(v)
					}
				}
				doc["pcr_values"] = map[string]any{"sha256": vals}
				for _, e := range r.Events {
					var ct attest.ChildTable
					if e.Type == attest.EventChildTable && json.Unmarshal(e.Data, &ct) == nil {
						cv.ChildTableSHA256 = ct.SHA256
					}
				}
			}
			doc["cvmd"] = cv
			b, err := json.MarshalIndent(doc, "", "  ")
			if err != nil {
				return err
			}
			b = append(b, '\n')
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return err
			}
			return IOOf(cmd).Print("policy written to "+out, map[string]any{"file": out, "simulated": r.Simulated})
		},
	}
	f := c.Flags()
	f.StringVar(&bundlePath, "amd-bundle", "", "PEM with the AMD ASK and ARK (and optionally the VCEK)")
	f.StringVar(&tdxCollateral, "tdx-collateral", "", "Intel PCS collateral bundle for TDX evidence")
	f.StringVar(&intelRoots, "intel-roots", "", "PEM roots a TDX PCK chain must lead to (default: Intel's SGX Root CA)")
	f.StringVarP(&out, "output", "o", "", "policy file to write (default: stdout)")
	f.IntSliceVar(&pcrs, "pcr", []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, "SHA-256 PCRs to pin")
	f.BoolVar(&allowSim, "allow-simulated", false, "accept a token from a simulated platform (development only)")
	return c
}
