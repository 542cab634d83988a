package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	tpmattest "github.com/google/go-tpm-tools/proto/attest"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/verify"
)

func init() { Register("attestation", newAttestationVerifyCmd) }

func newAttestationVerifyCmd() *cobra.Command {
	var tee, vtpm, bundlePath, childTable, manifest, storage, bootID, tdxCollateral, intelRoots string
	var skew time.Duration
	var pf policyFlags
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
signature; for TDX the PCK chain to Intel's root (or --intel-roots), the quote
and QE signatures and the TCB status against --tdx-collateral (recorded Intel
PCS responses: nothing is fetched); REPORT_DATA against --tee (for snp-vtpm:
SHA3-512(tee ‖ AK)); the
vTPM quotes against the AK and --vtpm; cvmd's measurement log replayed to
PCRs 15 and 16; and --policy: a CoRIM (Cocos's or "cvm policy create-corim"'s;
signed ones are checked against --corim-key, unsigned ones need
--allow-unsigned-corim) or a JSON policy (Cocos's attestation_policy.json:
go-sev-guest "policy", "rootOfTrust", "pcr_values", plus a "cvmd" section).

The token's iat and exp are checked against this machine's clock, within
--clock-skew. A token names the VM boot it comes from: --boot-id refuses a
token of any other (earlier) boot. Simulated evidence (cvmd's development
platform) is refused unless --allow-simulated. The first failed check is printed with the values that
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
			o := verify.Options{AllowSimulated: allowSim, BootID: bootID, ClockSkew: skew}
			if o.ReportData, err = hexArg("tee", tee, 64); err != nil {
				return err
			}
			if o.Nonce, err = hexArg("vtpm", vtpm, 32); err != nil {
				return err
			}
			if o.Policy, err = pf.load(); err != nil {
				return err
			}
			if bundlePath != "" {
				if o.AMDBundle, err = os.ReadFile(bundlePath); err != nil {
					return fmt.Errorf("reading AMD bundle: %w", err)
				}
			}
			if o.TDXCollateral, o.IntelRoots, err = readTDXTrust(tdxCollateral, intelRoots); err != nil {
				return err
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
			// fresh: the evidence was bound to nonces this caller chose.
			v := map[string]any{"ok": true, "platform": r.Claims.PlatformType, "simulated": r.Simulated, "checks": r.Checks,
				"fresh": o.ReportData != nil || o.Nonce != nil}
			if r.SNP != nil {
				v["measurement"] = hex.EncodeToString(r.SNP.GetMeasurement())
				line += "\nSNP measurement: " + hex.EncodeToString(r.SNP.GetMeasurement())
			}
			if r.TDX != nil {
				v["mrtd"] = hex.EncodeToString(r.TDX.MRTD)
				line += "\nTDX MRTD: " + hex.EncodeToString(r.TDX.MRTD)
			}
			if r.TPM != nil {
				ak := sha256.Sum256(r.TPM.GetAkPub())
				v["ak_sha256"] = hex.EncodeToString(ak[:])
				line += "\nAK sha256 (for --ak): " + hex.EncodeToString(ak[:])
			}
			if r.BootID != "" {
				v["boot_id"] = r.BootID
				line += "\nboot id (for --boot-id): " + r.BootID
			}
			v["issued_at"] = r.IssuedAt.UTC().Format(time.RFC3339)
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
	pf.add(c)
	f.StringVar(&bundlePath, "amd-bundle", "", "PEM with the AMD ASK and ARK (and optionally the VCEK); default: embedded AMD roots")
	f.StringVar(&childTable, "child-table", "", "expected supervisor child table SHA-256, hex (cvmd supervise --print-sandbox)")
	f.StringVar(&manifest, "manifest", "", "expected manifest SHA3-256 in PCR 16's log, hex")
	f.StringVar(&storage, "storage", "", "required storage of the computation's files: disk (the encrypted, authenticated scratch disk) or memory")
	f.StringArrayVar(&aks, "ak", nil, "trusted TPM AK (SHA-256 of its public area, hex); needed for vtpm-only evidence")
	f.BoolVar(&allowSim, "allow-simulated", false, "accept evidence from a simulated platform (development only)")
	f.StringVar(&tdxCollateral, "tdx-collateral", "", "Intel PCS collateral bundle (JSON of recorded PCS responses) for TDX evidence")
	f.StringVar(&intelRoots, "intel-roots", "", "PEM roots a TDX PCK chain must lead to (default: Intel's SGX Root CA)")
	f.StringVar(&bootID, "boot-id", "", "the VM boot the token must come from (as a previous verify printed it)")
	f.DurationVar(&skew, "clock-skew", verify.DefaultClockSkew, "tolerated clock difference with the VM for the token's iat and exp")
	return c
}

// readTDXTrust reads the TDX collateral bundle and roots files ("" = none).
func readTDXTrust(collateralPath, rootsPath string) (collateral, roots []byte, err error) {
	if collateralPath != "" {
		if collateral, err = os.ReadFile(collateralPath); err != nil {
			return nil, nil, fmt.Errorf("reading TDX collateral: %w", err)
		}
	}
	if rootsPath != "" {
		if roots, err = os.ReadFile(rootsPath); err != nil {
			return nil, nil, fmt.Errorf("reading Intel roots: %w", err)
		}
	}
	return collateral, roots, nil
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
