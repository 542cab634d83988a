// Package verify checks cvmd (and Cocos-format) EAT tokens: the COSE
// signature against a key the evidence vouches for, the SEV-SNP certificate
// chain ARK → ASK → VCEK from a bundle (no network), the report signature,
// REPORT_DATA against the expected binding, the guest policy, TCB, SVN, VMPL,
// host data and ID keys (go-sev-guest check.Policy), the vTPM quotes against
// the AK and nonce, PCR values, and cvmd's measurement log replayed to PCRs
// 15 and 16 with the expected child table.
//
// Every refusal is a *CheckError naming the check and the values. verify has
// no cgo and opens nothing but what the caller passes; the cvm CLI and the
// aTLS client (attest/atls) import it.
package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/proto/sevsnp"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
)

// Options say what to expect. The zero value verifies against go-sev-guest's
// embedded AMD roots with DefaultPolicy and checks no binding: callers that
// sent a nonce must set ReportData and/or Nonce.
type Options struct {
	// Policy; nil = the default (debug refused, nothing pinned).
	Policy *Policy
	// ReportData is the expected teeNonce (≤ 64 bytes, zero-padded as the
	// agent pads it). nil = not checked (SNP and SNP-vTPM evidence is then
	// only as fresh as the caller can otherwise tell).
	ReportData []byte
	// Nonce is the expected vtpmNonce (≤ 32 bytes, zero-padded). nil = not checked.
	Nonce []byte
	// AMDBundle is PEM: the ASK and ARK (any order), optionally a VCEK. nil =
	// go-sev-guest's embedded AMD roots, plus rootOfTrust bundles of the policy.
	AMDBundle []byte
	// IntelRoots is PEM: the roots a TDX PCK chain must lead to. nil =
	// Intel's SGX Root CA (embedded).
	IntelRoots []byte
	// TDXCollateral is an intelpcs bundle (Intel PCS responses recorded
	// offline) for the TDX platforms expected: TCB info, QE identity, CRLs.
	// TDX evidence is refused without it.
	TDXCollateral []byte
	// AllowSimulated accepts evidence from simulated platforms (the result is
	// still marked Simulated). With no AMDBundle it also trusts the test-only
	// chain carried in the evidence itself.
	AllowSimulated bool
	// Now is the time certificates and the token's iat/exp are checked at;
	// zero = time.Now().
	Now time.Time
	// ClockSkew is how far the token's clock may be from Now: iat may be up
	// to ClockSkew in the future, exp up to ClockSkew in the past. Zero =
	// DefaultClockSkew.
	ClockSkew time.Duration
	// BootID, if set, is the boot the token must come from (x-cvmd-boot-id,
	// as a previous Result.BootID showed it): a token from an earlier boot
	// of the VM is refused.
	BootID string
}

// DefaultClockSkew is the clock difference tolerated between the VM and the verifier.
const DefaultClockSkew = time.Minute

// Result describes evidence that passed.
type Result struct {
	Platform  attest.Platform
	Simulated bool
	Claims    *eat.Claims
	SNP       *sevsnp.Report        // nil without SNP
	TPM       *attestpb.Attestation // nil without vTPM
	PCRs      map[uint32][]byte     // SHA-256 bank, from the verified quote
	PCRs384   map[uint32][]byte     // SHA-384 bank, if quoted
	PCRsSHA1  map[uint32][]byte     // SHA-1 bank, if quoted (IMA's PCR 10 list is SHA-1)
	TDX       *TDXRegisters         // nil without TDX
	TDXQuote  *tdxpb.QuoteV4        // the verified quote, nil without TDX
	Events    attest.EventLog       // replayed and matching PCRs 15 and 16
	Checks    []string              // the checks that ran and passed, in order
	Restarts  map[string]uint32     // child → highest generation seen in the log
	Storage   *attest.Storage       // the last storage event of the log; nil without one
	BootID    string                // the boot the token comes from ("" if it names none)
	IssuedAt  time.Time

	childTables []string // hex, every child-table event of the log
	manifest    string   // hex SHA3-256 of the last manifest event
}

func (r *Result) pass(check string) { r.Checks = append(r.Checks, check) }

// Token verifies an EAT token.
func Token(token []byte, o Options) (*Result, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.Policy == nil {
		o.Policy = &Policy{}
	}
	msg, c, err := eat.Decode(token)
	if err != nil {
		return nil, fail("eat.decode", err)
	}
	r := &Result{Claims: c, BootID: c.BootID, IssuedAt: time.Unix(c.IssuedAt, 0)}
	r.pass("eat.decode")
	if err := checkHeader(msg, c); err != nil {
		return nil, err
	}
	r.pass("eat.kid")
	if err := checkTime(c, o); err != nil {
		return nil, err
	}
	r.pass("eat.time")
	p, err := attest.ParsePlatform(c.PlatformType)
	if err != nil || p == attest.NoCC {
		return nil, mismatch("eat.platform_type", fmt.Sprintf("%q", c.PlatformType), `"SNP", "vTPM", "SNP-vTPM", "TDX" or "Azure"`)
	}
	r.Platform = p
	if c.Simulated {
		r.Simulated = true
		if !o.AllowSimulated {
			return nil, fail("simulated", fmt.Errorf("%w (token claim x-cvmd-simulated)", ErrSimulated))
		}
	}
	if err := checkNonceClaim(c, o); err != nil {
		return nil, err
	}
	r.pass("eat.nonce")
	roots, err := o.rootSet()
	if err != nil {
		return nil, err
	}

	var signKey *ecdsa.PublicKey
	switch p {
	case attest.SNP:
		var att sevsnp.Attestation
		if err := proto.Unmarshal(c.RawReport, &att); err != nil {
			return nil, fail("snp.decode", err)
		}
		if err := verifySNP(r, &att, roots, o, expectedSNPReportData(o.ReportData)); err != nil {
			return nil, err
		}
		if signKey, err = verifyKeyReport(r, c, &att, roots, o); err != nil {
			return nil, err
		}
		if err := noVTPMRequirements(p, o.Policy); err != nil {
			return nil, err
		}
	case attest.TDX:
		if o.Policy.SNP != nil {
			return nil, mismatch("snp.policy", "TDX evidence without an SNP report", "an SNP report checked against the policy's \"policy\"")
		}
		q, t, err := verifyTDX(r, c.RawReport, c, o, expectedSNPReportData(o.ReportData))
		if err != nil {
			return nil, err
		}
		if signKey, err = verifyTDXKeyQuote(r, c, q, t, o); err != nil {
			return nil, err
		}
		if err := noVTPMRequirements(p, o.Policy); err != nil {
			return nil, err
		}
	case attest.VTPM, attest.SNPvTPM, attest.Azure:
		if o.Policy.TDX != nil && p != attest.Azure {
			return nil, mismatch("tdx.policy", p.String()+" evidence without a TDX quote", "a TDX quote checked against the policy's \"tdx\"")
		}
		if p == attest.VTPM && o.Policy.SNP != nil {
			return nil, mismatch("snp.policy", "vTPM evidence without an SNP report", "an SNP report checked against the policy's \"policy\"")
		}
		var att attestpb.Attestation
		if err := proto.Unmarshal(c.RawReport, &att); err != nil {
			return nil, fail("vtpm.decode", err)
		}
		r.TPM = &att
		ak, err := verifyVTPM(r, &att, c, roots, o)
		if err != nil {
			return nil, err
		}
		if c.Signer == nil || c.Signer.Kind != eat.SignerTPMAK {
			return nil, mismatch("eat.signer", fmt.Sprintf("%+v", kindOf(c.Signer)), eat.SignerTPMAK)
		}
		spki, err := x509.MarshalPKIXPublicKey(ak)
		if err != nil || !bytes.Equal(spki, c.Signer.Key) {
			return nil, mismatch("eat.signer", "a key other than the quoting AK", "the AK of the quote")
		}
		signKey = ak
	}
	if err := msg.Verify(signKey); err != nil {
		return nil, fail("eat.signature", err)
	}
	r.pass("eat.signature")
	if err := checkBootID(r, c, o); err != nil {
		return nil, err
	}
	if err := checkClaims(r, c); err != nil {
		return nil, err
	}
	r.pass("eat.claims")
	if o.Policy.CoRIM != nil {
		if err := checkCoRIM(r, o); err != nil {
			return nil, err
		}
	}
	if r.Simulated && !o.AllowSimulated {
		return nil, fail("simulated", ErrSimulated)
	}
	return r, nil
}

// checkHeader refuses a kid the signature does not cover and a protected
// kid that is not the issuer.
func checkHeader(msg *eat.Sign1, c *eat.Claims) error {
	if msg.UnprotectedKid != nil {
		return mismatch("eat.kid", fmt.Sprintf("unprotected kid %q (not covered by the signature)", msg.UnprotectedKid), "no unprotected kid")
	}
	if msg.Kid != nil && string(msg.Kid) != c.Issuer {
		return mismatch("eat.kid", fmt.Sprintf("%q", msg.Kid), fmt.Sprintf("the issuer %q", c.Issuer))
	}
	return nil
}

// checkTime checks iat and exp against o.Now, within o.ClockSkew.
func checkTime(c *eat.Claims, o Options) error {
	skew := o.ClockSkew
	if skew == 0 {
		skew = DefaultClockSkew
	}
	iat, exp := time.Unix(c.IssuedAt, 0), time.Unix(c.ExpiresAt, 0)
	switch {
	case c.IssuedAt == 0 || c.ExpiresAt == 0:
		return mismatch("eat.time", fmt.Sprintf("iat %d, exp %d", c.IssuedAt, c.ExpiresAt), "both set")
	case !exp.After(iat) || exp.Sub(iat) > eat.MaxValidity:
		return mismatch("eat.time", fmt.Sprintf("valid %v from iat", exp.Sub(iat)), fmt.Sprintf("more than 0 and at most %v", eat.MaxValidity))
	case iat.After(o.Now.Add(skew)):
		return mismatch("eat.iat", "issued at "+iat.UTC().Format(time.RFC3339), fmt.Sprintf("not after %s (now + %v skew)", o.Now.Add(skew).UTC().Format(time.RFC3339), skew))
	case exp.Before(o.Now.Add(-skew)):
		return mismatch("eat.exp", "expired at "+exp.UTC().Format(time.RFC3339), fmt.Sprintf("not before %s (now − %v skew)", o.Now.Add(-skew).UTC().Format(time.RFC3339), skew))
	}
	return nil
}

// checkBootID requires the boot id claim to be the one of the quoted
// measurement log (when there is one) and the one the caller expects.
func checkBootID(r *Result, c *eat.Claims, o Options) error {
	if r.Events != nil {
		if logged := r.Events.BootID(); logged != c.BootID {
			return mismatch("eat.boot_id", fmt.Sprintf("claim %q", c.BootID), fmt.Sprintf("%q, the quoted log's boot event", logged))
		}
	}
	if o.BootID != "" {
		if c.BootID != o.BootID {
			return mismatch("eat.boot_id", fmt.Sprintf("%q (a token from another boot of the VM)", c.BootID), fmt.Sprintf("%q", o.BootID))
		}
		r.pass("eat.boot_id")
	}
	return nil
}

// noVTPMRequirements refuses a policy asking what only a vTPM quote and
// its measurement log can show, for evidence without them.
func noVTPMRequirements(p attest.Platform, pol *Policy) error {
	pc := pol.CVMD
	switch {
	case len(pol.PCRs) > 0:
		return mismatch("vtpm.pcrs", p.String()+" evidence without a vTPM quote", "the policy's pcr_values")
	case pc.ChildTableSHA256 != "":
		return mismatch("cvmd.child_table", p.String()+" evidence without a measurement log", pc.ChildTableSHA256)
	case pc.ManifestSHA3256 != "":
		return mismatch("cvmd.manifest", p.String()+" evidence without a measurement log", pc.ManifestSHA3256)
	case pc.Storage != "":
		return mismatch("cvmd.storage", p.String()+" evidence without a measurement log", pc.Storage)
	}
	return nil
}

func kindOf(s *eat.Signing) string {
	if s == nil {
		return "none"
	}
	return s.Kind
}

// checkNonceClaim checks eat_nonce against what the caller sent (Cocos's
// rule: the vTPM nonce if one was sent, else the report data).
func checkNonceClaim(c *eat.Claims, o Options) error {
	if o.Nonce == nil && o.ReportData == nil {
		if len(c.Nonce) < eat.MinNonceLen {
			return mismatch("eat.nonce", fmt.Sprintf("%d bytes", len(c.Nonce)), fmt.Sprintf("at least %d", eat.MinNonceLen))
		}
		return nil
	}
	n, err := attest.PadVTPMNonce(o.Nonce)
	if err != nil {
		return fail("eat.nonce", err)
	}
	tee, err := attest.PadTEENonce(o.ReportData)
	if err != nil {
		return fail("eat.nonce", err)
	}
	want := attest.EATNonce(tee, n)
	if subtle.ConstantTimeCompare(c.Nonce, want) != 1 {
		return mismatch("eat.nonce", hex.EncodeToString(c.Nonce), hex.EncodeToString(want))
	}
	return nil
}

func expectedSNPReportData(rd []byte) []byte {
	if rd == nil {
		return nil
	}
	n, err := attest.PadTEENonce(rd)
	if err != nil {
		return rd // too long: compared as is, and fails
	}
	return n[:]
}

func hexs(b []byte) string { return hex.EncodeToString(b) }

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkClaims makes sure the Cocos-style claims say what the verified
// evidence says: a consumer reading x-cocos-sevsnp or x-cocos-vtpm instead of
// raw_report must not be told something else by whoever held the signing key.
func checkClaims(r *Result, c *eat.Claims) error {
	if r.SNP != nil {
		if c.SNP == nil {
			return mismatch("eat.claims", "no x-cocos-sevsnp", "the SNP report's claims")
		}
		if !bytes.Equal(c.SNP.Measurement, r.SNP.GetMeasurement()) || !bytes.Equal(c.Measurements, r.SNP.GetMeasurement()) {
			return mismatch("eat.claims measurement", hexs(c.SNP.Measurement), hexs(r.SNP.GetMeasurement()))
		}
		if c.SNP.Policy != r.SNP.GetPolicy() || c.SNP.ReportedTCB != r.SNP.GetReportedTcb() || !bytes.Equal(c.SNP.ChipID, r.SNP.GetChipId()) {
			return mismatch("eat.claims x-cocos-sevsnp", "policy/TCB/chip id differing from the report", "the report's values")
		}
	}
	if r.TDX != nil {
		if err := checkTDXClaims(r, c); err != nil {
			return err
		}
	}
	if r.PCRs != nil {
		if c.VTPM == nil {
			return mismatch("eat.claims", "no x-cocos-vtpm", "the quote's PCRs")
		}
		for i, v := range r.PCRs {
			if got := c.VTPM.PCRs[fmt.Sprintf("sha256:%d", i)]; got != hexs(v) {
				return mismatch(fmt.Sprintf("eat.claims x-cocos-vtpm sha256:%d", i), got, hexs(v))
			}
		}
		if len(c.VTPM.PCRs) != len(r.PCRs) {
			return mismatch("eat.claims x-cocos-vtpm", fmt.Sprintf("%d PCRs", len(c.VTPM.PCRs)), fmt.Sprintf("%d quoted", len(r.PCRs)))
		}
	}
	return nil
}

var errNoRoots = errors.New("no trusted AMD roots for this product line")
