package verify

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-sev-guest/kds"

	"github.com/cvmd/cvmd/attest/corim"
)

// CoRIM reference values against verified evidence.
//
// Triples are grouped by the part of the evidence they describe: their
// environment's class model (SEV-SNP, TDX, vTPM, cvmd), or — Cocos's
// CoRIMs, which name no model — the evidence's TEE report (SEV-SNP or TDX).
// For each group present in the CoRIM the evidence must have that part, and
// one of the group's triples must match it: a triple is one acceptable
// configuration. Within a triple every measurement with a uint key must
// match the register the key names (corim.RegisterName), and when the
// triple has unkeyed measurements (Cocos's random UUIDs name nothing) one of
// them must match the launch measurement (SNP MEASUREMENT, TDX MRTD), which
// is what Cocos's own Azure verifier compares.

// TDXRegisters is what a verified TDX quote shows.
type TDXRegisters struct {
	MRTD, MRSEAM, MRConfigID, MROwner, MROwnerConfig []byte
	RTMR                                             [4][]byte
	Attributes, XFAM                                 []byte // 8 bytes, as in the quote (little-endian)
}

// byKey returns the register a CoRIM measurement key names (corim.TDX*).
func (x *TDXRegisters) byKey(key uint64) ([]byte, bool) {
	switch {
	case key >= corim.TDXRTMR0 && key < corim.TDXRTMR0+4:
		return x.RTMR[key-corim.TDXRTMR0], true
	}
	v, ok := map[uint64][]byte{
		corim.TDXMRTD: x.MRTD, corim.TDXMRSEAM: x.MRSEAM, corim.TDXMRConfigID: x.MRConfigID, corim.TDXMROwner: x.MROwner,
		corim.TDXMROwnerConfig: x.MROwnerConfig, corim.TDXAttributes: x.Attributes, corim.TDXXFAM: x.XFAM,
	}[key]
	return v, ok
}

func corimGroup(model string) string {
	switch model {
	case corim.ModelSNP:
		return "snp"
	case corim.ModelTDX:
		return "tdx"
	case corim.ModelVTPM:
		return "vtpm"
	case corim.ModelCVMD:
		return "cvmd"
	}
	return ""
}

// checkCoRIM evaluates p.CoRIM against the verified result.
func checkCoRIM(r *Result, o Options) error {
	c := o.Policy.CoRIM
	if err := c.Valid(o.Now); err != nil {
		var ce *corim.Error
		if errors.As(err, &ce) {
			err = ce.Err
		}
		return fail("corim.validity", err)
	}
	groups := map[string][]corim.RefTriple{}
	var order []string
	for _, t := range c.Triples() {
		g := corimGroup(t.Env.Model)
		if g == "" {
			if t.Env.Model != "" {
				return mismatch("corim.environment", fmt.Sprintf("class model %q", t.Env.Model), "SEV-SNP, TDX, vTPM, cvmd or none")
			}
			switch {
			case r.SNP != nil:
				g = "snp"
			case r.TDX != nil:
				g = "tdx"
			default:
				return mismatch("corim.environment", r.Platform.String()+" evidence without an SEV-SNP or TDX report",
					"an SEV-SNP or TDX report (reference values that name no model describe the TEE report)")
			}
		}
		if _, ok := groups[g]; !ok {
			order = append(order, g)
		}
		groups[g] = append(groups[g], t)
	}
	for _, g := range order {
		if !r.has(g) {
			return mismatch("corim."+g, r.Platform.String()+" evidence without "+partName[g], "the CoRIM's "+g+" reference values")
		}
		var first error
		matched := false
		for _, t := range groups[g] {
			err := matchTriple(r, g, t)
			if err == nil {
				matched = true
				break
			}
			if first == nil {
				first = err
			}
		}
		if !matched {
			if n := len(groups[g]); n > 1 {
				ce := first.(*CheckError)
				ce.Want += fmt.Sprintf(" (none of %d reference triples matches; first shown)", n)
			}
			return first
		}
		r.pass("corim." + g)
	}
	return nil
}

var partName = map[string]string{"snp": "an SEV-SNP report", "tdx": "a TDX quote", "vtpm": "a vTPM quote", "cvmd": "cvmd's measurement log"}

func (r *Result) has(group string) bool {
	switch group {
	case "snp":
		return r.SNP != nil
	case "tdx":
		return r.TDX != nil
	case "vtpm", "cvmd":
		return r.PCRs != nil
	}
	return false
}

// matchTriple checks one reference triple against the evidence part g.
func matchTriple(r *Result, g string, t corim.RefTriple) error {
	if err := matchInstance(r, g, t.Env); err != nil {
		return err
	}
	var unkeyed []corim.Measurement
	for _, m := range t.Measurements {
		if !m.Key.Labelled() {
			unkeyed = append(unkeyed, m)
			continue
		}
		if m.Key.Kind == corim.KeyText {
			return mismatch("corim."+g, "measurement key "+m.Key.String(), "a register number (see docs/attestation.md)")
		}
		if err := matchRegister(r, g, m); err != nil {
			return err
		}
	}
	if len(unkeyed) == 0 {
		return nil
	}
	launch, name := r.launchMeasurement(g)
	if launch == nil {
		return mismatch("corim."+g, "measurements without a key", "keyed measurements (a "+g+" part has no launch measurement)")
	}
	var seen []string
	for _, m := range unkeyed {
		if m.SVN != nil && g == "snp" && !m.SVN.Satisfied(uint64(r.SNP.GetGuestSvn())) {
			seen = append(seen, fmt.Sprintf("guest SVN %d not %s", r.SNP.GetGuestSvn(), m.SVN))
			continue
		}
		if m.SVN != nil && g != "snp" {
			return mismatch("corim."+g, "an SVN on a measurement without a key", "no SVN: "+g+" has no guest SVN")
		}
		if m.RawValue != nil && bytes.Equal(m.RawValue, launch) || digestMatches(m.Digests, launch) {
			return nil
		}
		for _, d := range m.Digests {
			seen = append(seen, hexs(d.Value))
		}
	}
	return mismatch("corim."+g+"."+name, hexs(launch), "one of the reference values ["+strings.Join(seen, ", ")+"]")
}

func digestMatches(ds []corim.Digest, v []byte) bool {
	for _, d := range ds {
		if bytes.Equal(d.Value, v) {
			return true
		}
	}
	return false
}

// launchMeasurement is what Cocos compares unkeyed reference values with.
func (r *Result) launchMeasurement(g string) ([]byte, string) {
	switch g {
	case "snp":
		return r.SNP.GetMeasurement(), "measurement"
	case "tdx":
		return r.TDX.MRTD, "mrtd"
	}
	return nil, ""
}

// matchInstance compares the environment instance with the evidence: a UEID
// with the token's ueid, a UUID with the one Cocos derives from the SEV-SNP
// product name. A group id is not something evidence shows: refused.
func matchInstance(r *Result, g string, env corim.Environment) error {
	if env.Group != nil {
		return mismatch("corim.environment", "a group id", "no group id (evidence carries none to compare)")
	}
	in := env.Instance
	if in == nil {
		return nil
	}
	switch {
	case in.Tag == corim.TagUEID:
		if !bytes.Equal(in.Value, r.Claims.UEID) {
			return mismatch("corim.environment instance", hexs(r.Claims.UEID), hexs(in.Value))
		}
		return nil
	case in.Tag == corim.TagUUID && g == "snp":
		line := kds.ProductLineFromFms(r.SNP.GetCpuid1EaxFms())
		if want := corim.ProductInstance(line); !bytes.Equal(want.Value, in.Value) {
			return mismatch("corim.environment instance", fmt.Sprintf("product %s (%s)", line, want), in.String())
		}
		return nil
	}
	return mismatch("corim.environment instance", in.String(), "a UEID, or for SEV-SNP a product UUID")
}

// matchRegister checks one keyed measurement.
func matchRegister(r *Result, g string, m corim.Measurement) error {
	model := map[string]string{"snp": corim.ModelSNP, "tdx": corim.ModelTDX, "vtpm": corim.ModelVTPM, "cvmd": corim.ModelCVMD}[g]
	name := corim.RegisterName(model, m.Key.Uint)
	check := "corim." + g + "." + strings.ToLower(strings.ReplaceAll(name, " ", ""))
	key := m.Key.Uint
	var value []byte            // the register, for digests and raw values
	var byAlg map[uint64][]byte // vTPM: one value per bank
	svn := func(*corim.SVN) error {
		return mismatch(check, "an SVN", "no SVN ("+name+" has none)")
	}
	switch g {
	case "snp":
		rep := r.SNP
		switch key {
		case corim.SNPMeasurement:
			value = rep.GetMeasurement()
			svn = func(s *corim.SVN) error {
				if !s.Satisfied(uint64(rep.GetGuestSvn())) {
					return mismatch("corim.snp.guest_svn", fmt.Sprint(rep.GetGuestSvn()), s.String())
				}
				return nil
			}
		case corim.SNPHostData:
			value = rep.GetHostData()
		case corim.SNPPolicy:
			value = binary.LittleEndian.AppendUint64(nil, rep.GetPolicy())
		case corim.SNPReportedTCB:
			svn = func(s *corim.SVN) error {
				got := kds.DecomposeTCBVersion(kds.TCBVersion(rep.GetReportedTcb()))
				want := kds.DecomposeTCBVersion(kds.TCBVersion(s.Value))
				if s.Min && !tcbAtLeast(got, want) || !s.Min && rep.GetReportedTcb() != s.Value {
					return mismatch(check, tcbString(got), strings.TrimSuffix(s.String(), fmt.Sprint(s.Value))+tcbString(want))
				}
				return nil
			}
		default:
			return mismatch("corim.snp", "measurement key "+m.Key.String(), "0–3 (MEASUREMENT, HOST_DATA, POLICY, REPORTED_TCB)")
		}
	case "tdx":
		var ok bool
		if value, ok = r.TDX.byKey(key); !ok {
			return mismatch("corim.tdx", "measurement key "+m.Key.String(), "0–10 (MRTD, RTMR0–3, MRSEAM, MRCONFIGID, MROWNER, MROWNERCONFIG, TD_ATTRIBUTES, XFAM)")
		}
	case "vtpm":
		if key > 23 {
			return mismatch("corim.vtpm", "PCR "+m.Key.String(), "0–23")
		}
		byAlg = map[uint64][]byte{corim.AlgSHA256: r.PCRs[uint32(key)]}
		if v, ok := r.PCRs384[uint32(key)]; ok {
			byAlg[corim.AlgSHA384] = v
		}
		check = fmt.Sprintf("corim.vtpm.pcr%d", key)
	case "cvmd":
		var got []byte
		switch key {
		case corim.CVMDChildTable:
			for _, h := range r.childTables {
				if b, err := hex.DecodeString(h); err == nil {
					// every table event must be the reference: check each.
					if !digestMatches(m.Digests, b) {
						return mismatch(check, h, "one of the reference values")
					}
					got = b
				}
			}
			if got == nil {
				return mismatch(check, "no child-table event in the log", "a child table")
			}
			value = got
		case corim.CVMDManifest:
			if r.manifest == "" {
				return mismatch(check, "no manifest event in the log", "a manifest")
			}
			value, _ = hex.DecodeString(r.manifest)
		default:
			return mismatch("corim.cvmd", "measurement key "+m.Key.String(), "0 (child table) or 1 (manifest)")
		}
	}
	if m.SVN != nil {
		if err := svn(m.SVN); err != nil {
			return err
		}
	}
	if m.RawValue != nil && !bytes.Equal(m.RawValue, value) {
		return mismatch(check, hexs(value), hexs(m.RawValue))
	}
	if len(m.Digests) == 0 {
		return nil
	}
	for _, d := range m.Digests {
		v := value
		if byAlg != nil {
			v = byAlg[d.Alg]
		}
		if v != nil && bytes.Equal(v, d.Value) {
			return nil
		}
	}
	got := hexs(value)
	if byAlg != nil {
		got = fmt.Sprintf("sha-256 %s", hexs(byAlg[corim.AlgSHA256]))
		if v, ok := byAlg[corim.AlgSHA384]; ok {
			got += ", sha-384 " + hexs(v)
		}
	}
	want := make([]string, len(m.Digests))
	for i, d := range m.Digests {
		want[i] = corim.AlgName(d.Alg) + " " + hexs(d.Value)
	}
	return mismatch(check, got, "one of ["+strings.Join(want, ", ")+"]")
}

// corimAKs returns the AK thumbprints (hex SHA-256) a CoRIM trusts.
func corimAKs(c *corim.CoRIM) []string {
	var out []string
	for _, kt := range c.KeyTriples() {
		if kt.Env.Model != corim.ModelVTPM && kt.Env.Model != "" {
			continue
		}
		for _, d := range kt.Thumbprints {
			if d.Alg == corim.AlgSHA256 {
				out = append(out, hexs(d.Value))
			}
		}
	}
	return out
}
