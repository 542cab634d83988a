package cli

import (
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cvmd/cvmd/attest/corim"
	"github.com/cvmd/cvmd/attest/verify"
)

func init() {
	Register("", newPolicyCmd)
	Register("policy", newCreateCoRIMCmd)
}

func newPolicyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "policy",
		Short: "Make attestation policies (CoRIM reference values)",
	}
}

// corimOut are the flags every create-corim platform shares.
type corimOut struct {
	output, signingKey, signer string
}

func (o *corimOut) flags(c *cobra.Command) {
	c.Flags().StringVarP(&o.output, "output", "o", "", "file to write (default stdout)")
	c.Flags().StringVar(&o.signingKey, "signing-key", "", "PEM private key (EC SEC1 or PKCS#8, Ed25519, RSA) to sign the CoRIM with (COSE_Sign1)")
	c.Flags().StringVar(&o.signer, "signer-name", "", "signer name written into the signed CoRIM's corim-meta")
}

func (o *corimOut) write(cmd *cobra.Command, c *corim.CoRIM) error {
	var b []byte
	var err error
	if o.signingKey != "" {
		key, kerr := readSigningKey(o.signingKey)
		if kerr != nil {
			return kerr
		}
		b, err = corim.Sign(c, key, o.signer)
	} else {
		b, err = corim.Marshal(c)
	}
	if err != nil {
		return err
	}
	if o.output == "" || o.output == "-" {
		_, err = cmd.OutOrStdout().Write(b)
		return err
	}
	if err := os.WriteFile(o.output, b, 0o644); err != nil {
		return err
	}
	what := "unsigned"
	if o.signingKey != "" {
		what = "signed"
	}
	return IOOf(cmd).Print(fmt.Sprintf("%s CoRIM written to %s (%d bytes)", what, o.output, len(b)),
		map[string]any{"file": o.output, "bytes": len(b), "signed": o.signingKey != "", "id": c.ID})
}

func readSigningKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("signing key %s: no PEM block", path)
	}
	var k any
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		if k, err = x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		}
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("signing key %s: PEM type %q, want a private key", path, blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %T cannot sign", path, k)
	}
	return s, nil
}

// hexBytes decodes a hex flag of exactly n bytes (n = 0: any length).
func hexBytes(name, v string, n int) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(v, "0x"))
	if err != nil {
		return nil, &UsageError{fmt.Errorf("--%s is not hex: %v", name, err)}
	}
	if n > 0 && len(b) != n {
		return nil, &UsageError{fmt.Errorf("--%s has %d bytes, want %d", name, len(b), n)}
	}
	return b, nil
}

func optHex(name, v string, n int) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	return hexBytes(name, v, n)
}

// optUint parses a decimal or 0x-hex flag; "" = not set.
func optUint(name, v string) (*uint64, error) {
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseUint(v, 0, 64)
	if err != nil {
		return nil, &UsageError{fmt.Errorf("--%s %q: %v", name, v, err)}
	}
	return &n, nil
}

func newCreateCoRIMCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "create-corim",
		Short: "Write a CoRIM with reference values for snp, tdx, vtpm or azure evidence",
		Long: `create-corim writes reference values as a CoRIM (CBOR; COSE_Sign1 with
--signing-key), read by "cvm attestation verify --policy", by the aTLS client
(AGENT_GRPC_ATTESTATION_POLICY) and by Cocos's CLI. The flags are those of
Cocos's "policy create-corim"; unlike it, every value is written (48-byte
SNP and TDX measurements as sha-384 digests), under keys that say which
register each pins (docs/attestation.md).`,
	}
	c.AddCommand(newCoRIMSNP(), newCoRIMTDX(), newCoRIMVTPM(), newCoRIMAzure())
	return c
}

func newCoRIMSNP() *cobra.Command {
	var out corimOut
	var meas []string
	var policy, svn, hostData, launchTCB, product string
	c := &cobra.Command{
		Use:   "snp",
		Short: "Reference values for SEV-SNP evidence (snp, snp-vtpm)",
		Long: `snp writes the launch MEASUREMENT (sha-384; repeat --measurement for
alternatives), the lowest GUEST_SVN, the exact guest POLICY and HOST_DATA and
the lowest TCB. Debug guests stay refused by the verifier's default policy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := snpValues(meas, policy, svn, hostData, launchTCB, product)
			if err != nil {
				return err
			}
			t, err := corim.SNPTriple(*v)
			if err != nil {
				return &UsageError{err}
			}
			return out.write(cmd, corim.New("snp", []corim.RefTriple{t}, nil))
		},
	}
	snpFlags(c, &meas, &policy, &svn, &hostData, &launchTCB, &product)
	out.flags(c)
	return c
}

func snpFlags(c *cobra.Command, meas *[]string, policy, svn, hostData, launchTCB, product *string) {
	f := c.Flags()
	f.StringArrayVar(meas, "measurement", nil, "launch MEASUREMENT, 48 bytes hex (repeat for alternatives; required)")
	f.StringVar(policy, "policy", "", "exact guest POLICY (e.g. 196608 or 0x30000)")
	f.StringVar(svn, "svn", "", "lowest acceptable GUEST_SVN")
	f.StringVar(hostData, "host-data", "", "exact HOST_DATA, 32 bytes hex")
	f.StringVar(launchTCB, "launch-tcb", "", "lowest acceptable TCB (64-bit TCB version; checked component-wise against REPORTED_TCB)")
	f.StringVar(product, "product", "Milan", "SEV-SNP product (Milan, Genoa, …): the environment instance, as Cocos sets it; \"\" = any")
}

func snpValues(meas []string, policy, svn, hostData, launchTCB, product string) (*corim.SNPValues, error) {
	if len(meas) == 0 {
		return nil, &UsageError{errors.New("--measurement is required: a CoRIM without one would accept any guest")}
	}
	v := &corim.SNPValues{Product: product}
	for _, m := range meas {
		b, err := hexBytes("measurement", m, 48)
		if err != nil {
			return nil, err
		}
		v.Measurements = append(v.Measurements, b)
	}
	var err error
	if v.Policy, err = optUint("policy", policy); err != nil {
		return nil, err
	}
	if v.MinGuestSVN, err = optUint("svn", svn); err != nil {
		return nil, err
	}
	if v.MinTCB, err = optUint("launch-tcb", launchTCB); err != nil {
		return nil, err
	}
	if v.HostData, err = optHex("host-data", hostData, 32); err != nil {
		return nil, err
	}
	return v, nil
}

func newCoRIMTDX() *cobra.Command {
	var out corimOut
	var f tdxFlagValues
	c := &cobra.Command{
		Use:   "tdx",
		Short: "Reference values for TDX evidence",
		Long: `tdx writes MRTD (required), RTMR0..3, MRSEAM, MRCONFIGID, MROWNER and
MROWNERCONFIG as sha-384 digests and TD_ATTRIBUTES and XFAM as exact values.
The quote's signature, PCK chain and TCB are checked by the verifier against
Intel's roots and the collateral bundle, not by the CoRIM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := f.values()
			if err != nil {
				return err
			}
			t, err := corim.TDXTriple(*v)
			if err != nil {
				return &UsageError{err}
			}
			return out.write(cmd, corim.New("tdx", []corim.RefTriple{t}, nil))
		},
	}
	f.flags(c)
	out.flags(c)
	return c
}

type tdxFlagValues struct {
	mrtd, rtmrs, mrSeam, configID, owner, ownerConfig, attributes, xfam, svn string
}

func (t *tdxFlagValues) flags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&t.mrtd, "measurement", "", "MRTD, 48 bytes hex (required)")
	f.StringVar(&t.rtmrs, "rtmrs", "", "RTMR0..3, comma-separated 48-byte hex values; an empty entry leaves that RTMR free")
	f.StringVar(&t.mrSeam, "mr-seam", "", "MRSEAM (TDX module), 48 bytes hex")
	f.StringVar(&t.configID, "mr-config-id", "", "MRCONFIGID, 48 bytes hex")
	f.StringVar(&t.owner, "mr-owner", "", "MROWNER, 48 bytes hex")
	f.StringVar(&t.ownerConfig, "mr-owner-config", "", "MROWNERCONFIG, 48 bytes hex")
	f.StringVar(&t.attributes, "td-attributes", "", "exact TD_ATTRIBUTES (64-bit; DEBUG is bit 0)")
	f.StringVar(&t.xfam, "xfam", "", "exact XFAM (64-bit)")
	f.StringVar(&t.svn, "svn", "", "accepted for Cocos's CLI compatibility; a TD has no guest SVN, so only 0 is allowed")
}

func (t *tdxFlagValues) values() (*corim.TDXValues, error) {
	if t.mrtd == "" {
		return nil, &UsageError{errors.New("--measurement (MRTD) is required: a CoRIM without one would accept any TD")}
	}
	if n, err := optUint("svn", t.svn); err != nil || (n != nil && *n != 0) {
		return nil, &UsageError{errors.New("--svn: a TD has no guest SVN (the TCB is checked against Intel's collateral)")}
	}
	v := &corim.TDXValues{}
	var err error
	if v.MRTD, err = hexBytes("measurement", t.mrtd, 48); err != nil {
		return nil, err
	}
	if t.rtmrs != "" {
		for i, r := range strings.Split(t.rtmrs, ",") {
			b, err := optHex(fmt.Sprintf("rtmrs[%d]", i), strings.TrimSpace(r), 48)
			if err != nil {
				return nil, err
			}
			v.RTMRs = append(v.RTMRs, b)
		}
	}
	for _, x := range []struct {
		name, val string
		dst       *[]byte
	}{{"mr-seam", t.mrSeam, &v.MRSEAM}, {"mr-config-id", t.configID, &v.MRConfigID}, {"mr-owner", t.owner, &v.MROwner}, {"mr-owner-config", t.ownerConfig, &v.MROwnerConfig}} {
		if *x.dst, err = optHex(x.name, x.val, 48); err != nil {
			return nil, err
		}
	}
	if v.Attributes, err = optUint("td-attributes", t.attributes); err != nil {
		return nil, err
	}
	if v.XFAM, err = optUint("xfam", t.xfam); err != nil {
		return nil, err
	}
	return v, nil
}

func newCoRIMVTPM() *cobra.Command {
	var out corimOut
	var pcrs, aks []string
	var childTable, manifest string
	c := &cobra.Command{
		Use:   "vtpm",
		Short: "Reference values for vTPM evidence (vtpm, and the vTPM part of snp-vtpm)",
		Long: `vtpm writes PCR reference values (--pcr N=hex: 32 bytes pins the SHA-256
bank, 48 bytes the SHA-384 bank; repeat a PCR for alternatives), the trusted
attestation keys (--ak: SHA-256 of the AK's TPMT_PUBLIC, as "cvm attestation
verify" prints it; vTPM evidence without SNP needs one) and cvmd's measured
child table and manifest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := corim.VTPMValues{PCRs: map[uint32][][]byte{}}
			for _, p := range pcrs {
				idx, val, ok := strings.Cut(p, "=")
				n, err := strconv.ParseUint(idx, 10, 8)
				if !ok || err != nil || n > 23 {
					return &UsageError{fmt.Errorf("--pcr %q: want N=hex with N in 0–23", p)}
				}
				b, err := hexBytes("pcr", val, 0)
				if err != nil {
					return err
				}
				if len(b) != 32 && len(b) != 48 {
					return &UsageError{fmt.Errorf("--pcr %q: %d bytes, want 32 (SHA-256) or 48 (SHA-384)", p, len(b))}
				}
				v.PCRs[uint32(n)] = append(v.PCRs[uint32(n)], b)
			}
			for _, a := range aks {
				b, err := hexBytes("ak", a, 32)
				if err != nil {
					return err
				}
				v.AKs = append(v.AKs, b)
			}
			var err error
			if v.ChildTable, err = optHex("child-table", childTable, 32); err != nil {
				return err
			}
			if v.Manifest, err = optHex("manifest", manifest, 32); err != nil {
				return err
			}
			refs, keys, err := corim.VTPMTriples(v)
			if err != nil {
				return &UsageError{err}
			}
			if len(refs) == 0 {
				return &UsageError{errors.New("no --pcr, --child-table or --manifest: a CoRIM without a measurement would accept anything")}
			}
			return out.write(cmd, corim.New("vtpm", refs, keys))
		},
	}
	f := c.Flags()
	f.StringArrayVar(&pcrs, "pcr", nil, "PCR value N=hex (repeatable)")
	f.StringArrayVar(&aks, "ak", nil, "trusted AK: SHA-256 of its TPMT_PUBLIC, hex (repeatable)")
	f.StringVar(&childTable, "child-table", "", "cvmd child table SHA-256, hex (cvmd supervise --print-sandbox)")
	f.StringVar(&manifest, "manifest", "", "computation manifest SHA3-256 in PCR 16's log, hex")
	out.flags(c)
	return c
}

func newCoRIMAzure() *cobra.Command {
	var out corimOut
	var tee string
	var meas []string
	var policy, svn, hostData, launchTCB, product string
	var tdx tdxFlagValues
	c := &cobra.Command{
		Use:   "azure",
		Short: "Reference values for Azure confidential VMs (the SEV-SNP report or TDX quote inside the vTPM)",
		Long: `azure writes the reference values of the hardware report an Azure CVM's
paravisor (HCL) puts in the vTPM: --tee snp takes the snp flags, --tee tdx the
tdx flags. The report is verified with the same SNP and TDX verifiers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var t corim.RefTriple
			switch tee {
			case "snp":
				v, err := snpValues(meas, policy, svn, hostData, launchTCB, product)
				if err != nil {
					return err
				}
				if t, err = corim.SNPTriple(*v); err != nil {
					return &UsageError{err}
				}
			case "tdx":
				if len(meas) > 1 {
					return &UsageError{errors.New("--tee tdx takes one --measurement (MRTD)")}
				}
				if len(meas) == 1 {
					tdx.mrtd = meas[0]
				}
				v, err := tdx.values()
				if err != nil {
					return err
				}
				if t, err = corim.TDXTriple(*v); err != nil {
					return &UsageError{err}
				}
			default:
				return &UsageError{fmt.Errorf("--tee %q: want snp or tdx", tee)}
			}
			return out.write(cmd, corim.New("azure", []corim.RefTriple{t}, nil))
		},
	}
	c.Flags().StringVar(&tee, "tee", "snp", "the CVM's hardware: snp or tdx")
	snpFlags(c, &meas, &policy, &svn, &hostData, &launchTCB, &product)
	c.Flags().StringVar(&tdx.rtmrs, "rtmrs", "", "tdx: RTMR0..3, comma-separated 48-byte hex values")
	c.Flags().StringVar(&tdx.mrSeam, "mr-seam", "", "tdx: MRSEAM, 48 bytes hex")
	c.Flags().StringVar(&tdx.attributes, "td-attributes", "", "tdx: exact TD_ATTRIBUTES")
	out.flags(c)
	return c
}

// policyFlags are how a command is told which policy to verify against.
type policyFlags struct {
	path          string
	corimKeys     []string
	allowUnsigned bool
}

func (p *policyFlags) add(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&p.path, "policy", "", "policy file: a CoRIM (Cocos's or cvm policy create-corim's) or a JSON policy (Cocos's attestation_policy.json, plus \"cvmd\")")
	f.StringArrayVar(&p.corimKeys, "corim-key", nil, "PEM public key (or certificate) a signed CoRIM policy must be signed by (repeatable)")
	f.BoolVar(&p.allowUnsigned, "allow-unsigned-corim", false, "accept a CoRIM policy that is not signed (or whose signature is not checked: no --corim-key)")
}

func (p *policyFlags) load() (*verify.Policy, error) {
	if p.path == "" {
		return &verify.Policy{}, nil
	}
	return loadPolicyFile(p.path, p.corimKeys, p.allowUnsigned)
}

// loadPolicyFile reads a JSON or CoRIM policy; keyFiles are PEM files of
// trusted CoRIM signers.
func loadPolicyFile(path string, keyFiles []string, allowUnsigned bool) (*verify.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	o := verify.PolicyOptions{AllowUnsignedCoRIM: allowUnsigned}
	for _, kf := range keyFiles {
		kb, err := os.ReadFile(kf)
		if err != nil {
			return nil, fmt.Errorf("reading CoRIM key: %w", err)
		}
		keys, err := corim.ParsePublicKeys(kb)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kf, err)
		}
		o.CoRIMKeys = append(o.CoRIMKeys, keys...)
	}
	pol, err := verify.LoadPolicy(b, o)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return pol, nil
}
