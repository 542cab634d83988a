package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	tpmattest "github.com/google/go-tpm-tools/proto/attest"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/verify"
)

func init() { Register("attestation", newAttestationVerifyCmd) }

func newAttestationVerifyCmd() *cobra.Command {
	var tee, vtpm, policyPath, bundlePath, childTable, manifest, storage string
	var aks []string
	var allowSim bool
	c := &cobra.Command{
		Use:   "verify [token-file]",
		Short: "Verify an attestation token (EAT) offline",
		Long: `verify checks an EAT token (default attestation.bin, as written by
"cvm attestation get") without the network: the COSE signature against the
TPM attestation key or the SNP-bound token key; the SEV-SNP chain ARK → ASK →
VCEK against --amd-bundle (PEM: ASK and ARK, e.g. AMD KDS cert_chain, plus
optionally the VCEK) or go-sev-guest's embedded AMD roots; the report
signature; REPORT_DATA against --tee (for snp-vtpm: SHA3-512(tee ‖ AK)); the
vTPM quotes against the AK and --vtpm; --policy (Cocos's attestation_policy.json:
go-sev-guest "policy", "rootOfTrust", "pcr_values", plus a "cvmd" section);
and cvmd's measurement log replayed to PCRs 15 and 16.

Simulated evidence (cvmd's development platform) is refused unless
--allow-simulated. The first failed check is printed with the values that
failed it, and the exit status is 1.`,
		Example: `  cvm attestation verify attestation.bin --tee $TEE --vtpm $VTPM --policy policy.json --amd-bundle milan.pem`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			file := "attestation.bin"
			if len(a) == 1 {
				file = a[0]
			}
			tok, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("reading token: %w", err)
			}
			o := verify.Options{AllowSimulated: allowSim}
			if o.ReportData, err = hexArg("tee", tee, 64); err != nil {
				return err
			}
			if o.Nonce, err = hexArg("vtpm", vtpm, 32); err != nil {
				return err
			}
			if policyPath != "" {
				b, err := os.ReadFile(policyPath)
				if err != nil {
					return fmt.Errorf("reading policy: %w", err)
				}
				if o.Policy, err = verify.ParsePolicy(b); err != nil {
					return err
				}
			} else {
				o.Policy = &verify.Policy{}
			}
			if bundlePath != "" {
				if o.AMDBundle, err = os.ReadFile(bundlePath); err != nil {
					return fmt.Errorf("reading AMD bundle: %w", err)
				}
			}
			for name, v := range map[string]string{"child-table": childTable, "manifest": manifest} {
				if v != "" {
					if b, err := hex.DecodeString(v); err != nil || len(b) != 32 {
						return &UsageError{fmt.Errorf("--%s: want 32 bytes of hex", name)}
					}
				}
			}
			if childTable != "" {
				o.Policy.CVMD.ChildTableSHA256 = childTable
			}
			if manifest != "" {
				o.Policy.CVMD.ManifestSHA3256 = manifest
			}
			if storage != "" {
				o.Policy.CVMD.Storage = storage
			}
			for _, ak := range aks {
				if b, err := hex.DecodeString(ak); err != nil || len(b) != 32 {
					return &UsageError{fmt.Errorf("--ak %q: want the SHA-256 of the AK public area in hex", ak)}
				}
				o.Policy.CVMD.TrustedAKSHA256 = append(o.Policy.CVMD.TrustedAKSHA256, ak)
			}
			r, err := verify.Token(tok, o)
			if err != nil {
				return err
			}
			out := IOOf(cmd)
			line := fmt.Sprintf("OK: %s evidence verified (%s)", r.Claims.PlatformType, strings.Join(r.Checks, ", "))
			if o.ReportData == nil && o.Nonce == nil {
				line += "\nWARNING: no --tee/--vtpm given: freshness not checked"
			}
			if r.Simulated {
				line += "\nWARNING: SIMULATED platform: this evidence proves nothing about hardware"
			}
			v := map[string]any{"ok": true, "platform": r.Claims.PlatformType, "simulated": r.Simulated, "checks": r.Checks}
			if r.SNP != nil {
				v["measurement"] = hex.EncodeToString(r.SNP.GetMeasurement())
				line += "\nSNP measurement: " + hex.EncodeToString(r.SNP.GetMeasurement())
			}
			if r.TPM != nil {
				ak := sha256.Sum256(r.TPM.GetAkPub())
				v["ak_sha256"] = hex.EncodeToString(ak[:])
				line += "\nAK sha256 (for --ak): " + hex.EncodeToString(ak[:])
			}
			if r.PCRs != nil {
				v["pcr15"] = hex.EncodeToString(r.PCRs[15])
				v["pcr16"] = hex.EncodeToString(r.PCRs[16])
				v["events"] = r.Events
				v["restarts"] = r.Restarts
				if r.Storage != nil {
					v["storage"] = r.Storage
					line += fmt.Sprintf("\nstorage: %s (%s, %d MiB)", r.Storage.Kind, r.Storage.FS, r.Storage.SizeBytes>>20)
					if r.Storage.Cipher != "" {
						line += fmt.Sprintf(", cipher %s, integrity %s", r.Storage.Cipher, r.Storage.Integrity)
					}
				}
				line += fmt.Sprintf("\nPCR15 %x (%d measured events), PCR16 %x", r.PCRs[15], len(r.Events), r.PCRs[16])
				for child, gen := range r.Restarts {
					line += fmt.Sprintf("\nchild %s: generation %d", child, gen)
				}
			}
			return out.Print(line, v)
		},
	}
	f := c.Flags()
	f.StringVar(&tee, "tee", "", "expected teeNonce / report data, hex (≤ 64 bytes)")
	f.StringVar(&vtpm, "vtpm", "", "expected vTPM nonce, hex (≤ 32 bytes)")
	f.StringVar(&policyPath, "policy", "", "policy JSON (Cocos attestation_policy.json format, plus \"cvmd\")")
	f.StringVar(&bundlePath, "amd-bundle", "", "PEM with the AMD ASK and ARK (and optionally the VCEK); default: embedded AMD roots")
	f.StringVar(&childTable, "child-table", "", "expected supervisor child table SHA-256, hex (cvmd supervise --print-sandbox)")
	f.StringVar(&manifest, "manifest", "", "expected manifest SHA3-256 in PCR 16's log, hex")
	f.StringVar(&storage, "storage", "", "required storage of the computation's files: disk (the encrypted, authenticated scratch disk) or memory")
	f.StringArrayVar(&aks, "ak", nil, "trusted TPM AK (SHA-256 of its public area, hex); needed for vtpm-only evidence")
	f.BoolVar(&allowSim, "allow-simulated", false, "accept evidence from a simulated platform (development only)")
	return c
}

// decodeAK returns the SHA-256 (hex) of the AK in a vTPM token's raw report, "" if none.
func decodeAK(tok []byte) (string, error) {
	_, c, err := eat.Decode(tok)
	if err != nil {
		return "", err
	}
	if p, err := attest.ParsePlatform(c.PlatformType); err != nil || p != attest.VTPM {
		return "", err
	}
	var att tpmattest.Attestation
	if err := proto.Unmarshal(c.RawReport, &att); err != nil {
		return "", err
	}
	s := sha256.Sum256(att.GetAkPub())
	return hex.EncodeToString(s[:]), nil
}
