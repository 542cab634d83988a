package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/proto/check"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	sevverify "github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
)

// roots are the AMD roots a verification trusts.
type roots struct {
	byLine       map[string][]*trust.AMDRootCerts
	vcek         *x509.Certificate // from the bundle, used when the evidence has none
	fromEvidence bool              // AllowSimulated without a bundle: trust the evidence's own chain
}

func (o Options) rootSet() (*roots, error) {
	rs := &roots{byLine: map[string][]*trust.AMDRootCerts{}}
	if o.AMDBundle != nil {
		if err := rs.addBundle(o.AMDBundle); err != nil {
			return nil, fail("snp.bundle", err)
		}
	}
	if rot := o.Policy.RootOfTrust; rot != nil {
		for _, path := range rot.GetCabundlePaths() {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fail("snp.bundle", err)
			}
			if err := rs.addBundle(b); err != nil {
				return nil, fail("snp.bundle", fmt.Errorf("%s: %w", path, err))
			}
		}
		for _, b := range rot.GetCabundles() {
			if err := rs.addBundle([]byte(b)); err != nil {
				return nil, fail("snp.bundle", err)
			}
		}
	}
	if len(rs.byLine) == 0 {
		lines := make([]string, 0, len(trust.DefaultRootCerts))
		for line := range trust.DefaultRootCerts {
			lines = append(lines, line)
		}
		sort.Strings(lines)
		for _, line := range lines {
			rs.byLine[line] = append(rs.byLine[line], trust.DefaultRootCerts[line])
		}
		rs.fromEvidence = o.AllowSimulated
	}
	return rs, nil
}

// addBundle adds the ARK/ASK pairs (and a VCEK) found in PEM data.
func (rs *roots) addBundle(data []byte) error {
	var arks, asks []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fmt.Errorf("parsing bundle certificate: %w", err)
		}
		cn := c.Subject.CommonName
		switch {
		case strings.HasPrefix(cn, "ARK-"):
			arks = append(arks, c)
		case cn == "SEV-VCEK":
			rs.vcek = c
		case strings.HasPrefix(cn, "SEV-"):
			asks = append(asks, c)
		}
	}
	if len(arks) == 0 || len(asks) == 0 {
		return errors.New("bundle needs an ARK and an ASK certificate")
	}
	for _, ark := range arks {
		line := strings.TrimPrefix(ark.Subject.CommonName, "ARK-")
		for _, ask := range asks {
			if ask.Subject.CommonName != "SEV-"+line {
				continue
			}
			r := trust.AMDRootCertsProduct(line)
			r.ProductCerts = &trust.ProductCerts{Ark: ark, Ask: ask}
			rs.byLine[line] = append(rs.byLine[line], r)
		}
	}
	if len(rs.byLine) == 0 {
		return errors.New("bundle has no ASK issued for its ARK's product line")
	}
	return nil
}

// isAMDRoot reports whether ark is one of AMD's real roots embedded in go-sev-guest.
func isAMDRoot(ark *x509.Certificate) bool {
	for _, r := range trust.DefaultRootCerts {
		if r.ProductCerts != nil && r.ProductCerts.Ark != nil && bytes.Equal(r.ProductCerts.Ark.RawSubjectPublicKeyInfo, ark.RawSubjectPublicKeyInfo) {
			return true
		}
	}
	return false
}

// verifySNPChain checks the report signature and its chain to a trusted root;
// it reports whether that root is a real AMD root.
func verifySNPChain(att *sevsnp.Attestation, rs *roots, o Options) (real bool, _ error) {
	if att.GetReport() == nil {
		return false, fail("snp.decode", errors.New("attestation has no report"))
	}
	if att.CertificateChain == nil {
		att.CertificateChain = &sevsnp.CertificateChain{}
	}
	if len(att.CertificateChain.GetVcekCert()) == 0 && rs.vcek != nil {
		att.CertificateChain.VcekCert = rs.vcek.Raw
	}
	// Roots of the report's product line only, when the report names it.
	line := reportLine(att)
	candidates := []*trust.AMDRootCerts{}
	for l, list := range rs.byLine {
		if line == "" || l == line {
			candidates = append(candidates, list...)
		}
	}
	if rs.fromEvidence {
		if r := evidenceRoots(att); r != nil {
			candidates = append(candidates, r)
		}
	}
	var firstErr error
	for _, r := range candidates {
		opts := &sevverify.Options{
			DisableCertFetching: true,
			Now:                 o.Now,
			TrustedRoots:        map[string][]*trust.AMDRootCerts{r.ProductLine: {r}},
			Product:             att.GetProduct(),
		}
		err := sevverify.SnpAttestation(proto.Clone(att).(*sevsnp.Attestation), opts)
		if err == nil {
			return isAMDRoot(r.ProductCerts.Ark), nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = errNoRoots
	}
	// Tell a bad signature from a bad chain: check the signature with the
	// VCEK the evidence carries.
	if vcek, err := x509.ParseCertificate(att.GetCertificateChain().GetVcekCert()); err == nil {
		if sevverify.SnpProtoReportSignature(att.GetReport(), vcek) != nil {
			return false, fail("snp.signature", firstErr)
		}
	}
	return false, fail("snp.chain", firstErr)
}

// reportLine is the product line the report says it comes from, or "".
func reportLine(att *sevsnp.Attestation) string {
	if fms := att.GetReport().GetCpuid1EaxFms(); fms != 0 {
		return kds.ProductLineFromFms(fms)
	}
	if att.GetProduct() != nil {
		return kds.ProductLine(att.GetProduct())
	}
	return ""
}

// evidenceRoots returns the ARK/ASK carried in the evidence (simulated use only).
func evidenceRoots(att *sevsnp.Attestation) *trust.AMDRootCerts {
	ark, err1 := x509.ParseCertificate(att.GetCertificateChain().GetArkCert())
	ask, err2 := x509.ParseCertificate(att.GetCertificateChain().GetAskCert())
	if err1 != nil || err2 != nil || isAMDRoot(ark) {
		return nil
	}
	r := trust.AMDRootCertsProduct(strings.TrimPrefix(ark.Subject.CommonName, "ARK-"))
	r.ProductCerts = &trust.ProductCerts{Ark: ark, Ask: ask}
	return r
}

// verifySNP checks an SNP attestation fully: chain, signature, REPORT_DATA,
// policy. wantRD nil skips the REPORT_DATA check.
func verifySNP(r *Result, att *sevsnp.Attestation, rs *roots, o Options, wantRD []byte) error {
	real, err := verifySNPChain(att, rs, o)
	if err != nil {
		return err
	}
	r.pass("snp.chain")
	r.pass("snp.signature")
	if !real {
		r.Simulated = true
		if !o.AllowSimulated {
			return fail("simulated", fmt.Errorf("%w (SEV-SNP chain does not lead to an AMD root)", ErrSimulated))
		}
	}
	rep := att.GetReport()
	if wantRD != nil {
		if !bytes.Equal(rep.GetReportData(), wantRD) {
			return mismatch("snp.report_data", hexs(rep.GetReportData()), hexs(wantRD))
		}
		r.pass("snp.report_data")
	}
	if err := checkSNPPolicy(rep, att, o.Policy); err != nil {
		return err
	}
	r.pass("snp.policy")
	r.SNP = rep
	return nil
}

// checkSNPPolicy runs the headline checks by name, then go-sev-guest's
// validate for everything check.Policy can say.
func checkSNPPolicy(rep *sevsnp.Report, att *sevsnp.Attestation, p *Policy) error {
	pol := p.SNP
	if pol == nil {
		pol = defaultSNPPolicy()
	}
	allowed, err := abi.ParseSnpPolicy(pol.GetPolicy())
	if err != nil {
		return fail("snp.policy", fmt.Errorf("policy file guest policy: %w", err))
	}
	guest, err := abi.ParseSnpPolicy(rep.GetPolicy())
	if err != nil {
		return fail("snp.guest_policy", err)
	}
	if guest.Debug && !allowed.Debug {
		return mismatch("snp.debug", fmt.Sprintf("guest policy 0x%x with DEBUG set", rep.GetPolicy()), "DEBUG clear (the policy does not allow debug)")
	}
	if m := pol.GetMeasurement(); len(m) > 0 && !bytes.Equal(m, rep.GetMeasurement()) {
		return mismatch("snp.measurement", hexs(rep.GetMeasurement()), hexs(m))
	}
	if min := pol.GetMinimumTcb(); min != 0 {
		want := kds.DecomposeTCBVersion(kds.TCBVersion(min))
		for name, v := range map[string]uint64{"reported_tcb": rep.GetReportedTcb(), "current_tcb": rep.GetCurrentTcb(), "committed_tcb": rep.GetCommittedTcb()} {
			got := kds.DecomposeTCBVersion(kds.TCBVersion(v))
			if !tcbAtLeast(got, want) {
				return mismatch("snp.tcb", fmt.Sprintf("%s %s", name, tcbString(got)), "at least "+tcbString(want))
			}
		}
	}
	if min := pol.GetMinimumGuestSvn(); rep.GetGuestSvn() < min {
		return mismatch("snp.guest_svn", fmt.Sprint(rep.GetGuestSvn()), fmt.Sprintf("at least %d", min))
	}
	if v := pol.GetVmpl(); v != nil && rep.GetVmpl() != v.GetValue() {
		return mismatch("snp.vmpl", fmt.Sprint(rep.GetVmpl()), fmt.Sprint(v.GetValue()))
	}
	if h := pol.GetHostData(); len(h) > 0 && !bytes.Equal(h, rep.GetHostData()) {
		return mismatch("snp.host_data", hexs(rep.GetHostData()), hexs(h))
	}
	opts, err := validate.PolicyToOptions(pol)
	if err != nil {
		return fail("snp.policy", fmt.Errorf("policy file: %w", err))
	}
	opts.ReportData = nil // checked against the binding, not the policy file
	if err := validate.SnpAttestation(att, opts); err != nil {
		return fail("snp.policy", err)
	}
	return nil
}

func defaultSNPPolicy() *check.Policy {
	return &check.Policy{Policy: DefaultSNPGuestPolicy}
}

func tcbAtLeast(got, want kds.TCBParts) bool {
	return got.BlSpl >= want.BlSpl && got.TeeSpl >= want.TeeSpl && got.SnpSpl >= want.SnpSpl &&
		got.UcodeSpl >= want.UcodeSpl && got.Spl4 >= want.Spl4 && got.Spl5 >= want.Spl5 &&
		got.Spl6 >= want.Spl6 && got.Spl7 >= want.Spl7
}

func tcbString(t kds.TCBParts) string {
	return fmt.Sprintf("{bl %d, tee %d, snp %d, ucode %d}", t.BlSpl, t.TeeSpl, t.SnpSpl, t.UcodeSpl)
}

// verifyKeyReport checks the SNP report that binds an SNP-only token's
// signing key and returns the key.
func verifyKeyReport(r *Result, c *eat.Claims, main *sevsnp.Attestation, rs *roots, o Options) (*ecdsa.PublicKey, error) {
	if c.Signer == nil || c.Signer.Kind != eat.SignerSNPKeyReport {
		return nil, mismatch("eat.signer", kindOf(c.Signer), eat.SignerSNPKeyReport)
	}
	pk, err := x509.ParsePKIXPublicKey(c.Signer.Key)
	if err != nil {
		return nil, fail("eat.signer", err)
	}
	key, ok := pk.(*ecdsa.PublicKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fail("eat.signer", errors.New("signing key is not ECDSA P-256"))
	}
	var kr sevsnp.Attestation
	if err := proto.Unmarshal(c.Signer.KeyReport, &kr); err != nil {
		return nil, fail("eat.signer", fmt.Errorf("key report: %w", err))
	}
	real, err := verifySNPChain(&kr, rs, o)
	if err != nil {
		err.(*CheckError).Check = "eat.signer." + err.(*CheckError).Check
		return nil, err
	}
	if !real {
		r.Simulated = true
	}
	want := attest.KeyReportData(c.Signer.Key)
	if !bytes.Equal(kr.GetReport().GetReportData(), want[:]) {
		return nil, mismatch("eat.signer.report_data", hexs(kr.GetReport().GetReportData()), hexs(want[:]))
	}
	// Same VM: same chip, launch measurement and policy as the evidence.
	a, b := kr.GetReport(), main.GetReport()
	if !bytes.Equal(a.GetChipId(), b.GetChipId()) || !bytes.Equal(a.GetMeasurement(), b.GetMeasurement()) || a.GetPolicy() != b.GetPolicy() {
		return nil, mismatch("eat.signer.same_vm", "key report from another chip, measurement or policy", "the evidence's chip, measurement and policy")
	}
	r.pass("eat.signer")
	return key, nil
}
