package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	_ "embed"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-tdx-guest/proto/checkconfig"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/intelpcs"
)

// intelRootPEM is Intel's SGX Root CA (the one go-tdx-guest embeds), the
// root of every real TDX PCK chain.
//
//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

var intelRoot = sync.OnceValues(func() (*x509.Certificate, error) {
	blk, _ := pem.Decode(intelRootPEM)
	if blk == nil {
		return nil, errors.New("verify: embedded Intel SGX root is not PEM")
	}
	return x509.ParseCertificate(blk.Bytes)
})

// tdxTrust is what a TDX verification trusts.
type tdxTrust struct {
	pool   *x509.CertPool
	bundle *intelpcs.Bundle
}

// tdxTrustFor builds the roots and collateral for a quote's chain: o.IntelRoots
// or Intel's root; with AllowSimulated and no roots given, also the root the
// evidence carries. It reports whether the chain's root is Intel's.
func tdxTrustFor(chain *tdxverify.PCKCertificateChain, c *eat.Claims, o Options) (*tdxTrust, bool, error) {
	real, err := intelRoot()
	if err != nil {
		return nil, false, fail("tdx.chain", err)
	}
	t := &tdxTrust{pool: x509.NewCertPool()}
	if o.IntelRoots != nil {
		if !t.pool.AppendCertsFromPEM(o.IntelRoots) {
			return nil, false, fail("tdx.chain", errors.New("the Intel roots given hold no PEM certificate"))
		}
	} else {
		t.pool.AddCert(real)
		if o.AllowSimulated && chain.RootCertificate != nil {
			t.pool.AddCert(chain.RootCertificate)
		}
	}
	isReal := chain.RootCertificate != nil && bytes.Equal(chain.RootCertificate.RawSubjectPublicKeyInfo, real.RawSubjectPublicKeyInfo)
	col := o.TDXCollateral
	if col == nil && o.AllowSimulated && !isReal && c != nil {
		col = c.TDXCollateral // a simulated platform's own collateral: trusted only as simulated
	}
	if col == nil {
		return nil, isReal, mismatch("tdx.collateral", "no collateral bundle", "Intel PCS collateral (TCB info, QE identity, CRLs) for the quote's platform: verification never goes to the network")
	}
	if t.bundle, err = intelpcs.Parse(col); err != nil {
		return nil, isReal, fail("tdx.collateral", err)
	}
	return t, isReal, nil
}

func (o Options) tdxTimes() *tdxverify.TimeSet {
	return &tdxverify.TimeSet{PckCertChain: o.Now, TcbInfo: o.Now, QeIdentity: o.Now, PckCrl: o.Now, RootCaCrl: o.Now}
}

// tdxQuoteSigned checks a quote's PCK chain to the trusted roots and its
// signatures (quote by the attestation key, QE report by the PCK key, the
// QE report binding the attestation key), without collateral.
func tdxQuoteSigned(q *tdxpb.QuoteV4, chain *tdxverify.PCKCertificateChain, t *tdxTrust, o Options) error {
	inter := x509.NewCertPool()
	inter.AddCert(chain.IntermediateCertificate)
	if _, err := chain.PCKCertificate.Verify(x509.VerifyOptions{Roots: t.pool, Intermediates: inter, CurrentTime: o.Now}); err != nil {
		return fail("tdx.chain", fmt.Errorf("PCK certificate: %w", err))
	}
	if err := tdxverify.TdxQuote(q, &tdxverify.Options{TrustedRoots: t.pool, Now: o.tdxTimes()}); err != nil {
		return fail("tdx.signature", err)
	}
	return nil
}

// verifyTDX checks a TDX quote fully: chain, signatures, TCB status against
// the collateral, REPORT_DATA (wantRD nil: not checked), debug and policy.
func verifyTDX(r *Result, raw []byte, c *eat.Claims, o Options, wantRD []byte) (*tdxpb.QuoteV4, *tdxTrust, error) {
	q, err := attest.ParseTDXQuote(raw)
	if err != nil {
		return nil, nil, fail("tdx.decode", err)
	}
	chain, err := tdxverify.ExtractChainFromQuote(q)
	if err != nil {
		return nil, nil, fail("tdx.chain", err)
	}
	t, isReal, err := tdxTrustFor(chain, c, o)
	if err != nil {
		return nil, nil, err
	}
	if !isReal {
		r.Simulated = true
		if !o.AllowSimulated {
			return nil, nil, fail("simulated", fmt.Errorf("%w (TDX PCK chain does not lead to Intel's SGX root)", ErrSimulated))
		}
	}
	if err := tdxQuoteSigned(q, chain, t, o); err != nil {
		return nil, nil, err
	}
	r.pass("tdx.chain")
	r.pass("tdx.signature")
	err = tdxverify.TdxQuote(q, &tdxverify.Options{GetCollateral: true, CheckRevocations: true, Getter: t.bundle, TrustedRoots: t.pool, Now: o.tdxTimes()})
	if err != nil {
		return nil, nil, fail("tdx.tcb", err)
	}
	r.pass("tdx.tcb")
	body := q.GetTdQuoteBody()
	if wantRD != nil {
		if !bytes.Equal(body.GetReportData(), wantRD) {
			return nil, nil, mismatch("tdx.report_data", hexs(body.GetReportData()), hexs(wantRD))
		}
		r.pass("tdx.report_data")
	}
	if err := checkTDXPolicy(q, o.Policy.TDX); err != nil {
		return nil, nil, err
	}
	r.pass("tdx.policy")
	rt := body.GetRtmrs()
	r.TDX = &TDXRegisters{MRTD: body.GetMrTd(), MRSEAM: body.GetMrSeam(), MRConfigID: body.GetMrConfigId(), MROwner: body.GetMrOwner(),
		MROwnerConfig: body.GetMrOwnerConfig(), Attributes: body.GetTdAttributes(), XFAM: body.GetXfam()}
	copy(r.TDX.RTMR[:], rt)
	r.TDXQuote = q
	return q, t, nil
}

// checkTDXPolicy refuses a debug TD unless the policy allows it, checks the
// headline registers by name, then everything checkconfig.Policy can say
// through go-tdx-guest's validate.
func checkTDXPolicy(q *tdxpb.QuoteV4, pol *checkconfig.Policy) error {
	body := q.GetTdQuoteBody()
	attrs := binary.LittleEndian.Uint64(append(append([]byte{}, body.GetTdAttributes()...), make([]byte, 8)...)[:8])
	allowed := pol.GetTdQuoteBodyPolicy().GetTdAttributes()
	if attrs&attest.TDXDebug != 0 && (len(allowed) == 0 || allowed[0]&attest.TDXDebug == 0) {
		return mismatch("tdx.debug", fmt.Sprintf("TD_ATTRIBUTES %#x with DEBUG set", attrs), "DEBUG clear (the policy does not allow a debug TD)")
	}
	if pol == nil {
		return nil
	}
	bp := pol.GetTdQuoteBodyPolicy()
	for _, c := range []struct {
		check     string
		got, want []byte
	}{
		{"tdx.mrtd", body.GetMrTd(), bp.GetMrTd()},
		{"tdx.mrseam", body.GetMrSeam(), bp.GetMrSeam()},
		{"tdx.td_attributes", body.GetTdAttributes(), bp.GetTdAttributes()},
		{"tdx.xfam", body.GetXfam(), bp.GetXfam()},
	} {
		if len(c.want) > 0 && !bytes.Equal(c.got, c.want) {
			return mismatch(c.check, hexs(c.got), hexs(c.want))
		}
	}
	if anyMrTd := bp.GetAnyMrTd(); len(anyMrTd) > 0 && !digestIn(body.GetMrTd(), anyMrTd) {
		return mismatch("tdx.mrtd", hexs(body.GetMrTd()), "one of the policy's any_mr_td")
	}
	for i, want := range bp.GetRtmrs() {
		if got := body.GetRtmrs(); i < len(got) && len(want) > 0 && !bytes.Equal(got[i], want) {
			return mismatch(fmt.Sprintf("tdx.rtmr%d", i), hexs(got[i]), hexs(want))
		}
	}
	opts, err := validate.PolicyToOptions(pol)
	if err != nil {
		return fail("tdx.policy", fmt.Errorf("policy file: %w", err))
	}
	opts.TdQuoteBodyOptions.ReportData = nil // checked against the binding, not the policy file
	if err := validate.TdxQuote(q, opts); err != nil {
		return fail("tdx.policy", err)
	}
	return nil
}

func digestIn(v []byte, list [][]byte) bool {
	for _, d := range list {
		if bytes.Equal(v, d) {
			return true
		}
	}
	return false
}

// verifyTDXKeyQuote checks the quote that binds a TDX token's signing key
// and returns the key: signed like the evidence, from the same TD on the
// same platform, REPORT_DATA binding the key.
func verifyTDXKeyQuote(r *Result, c *eat.Claims, main *tdxpb.QuoteV4, t *tdxTrust, o Options) (*ecdsa.PublicKey, error) {
	if c.Signer == nil || c.Signer.Kind != eat.SignerTDXKeyQuote {
		return nil, mismatch("eat.signer", kindOf(c.Signer), eat.SignerTDXKeyQuote)
	}
	key, err := parseP256(c.Signer.Key)
	if err != nil {
		return nil, fail("eat.signer", err)
	}
	kq, err := attest.ParseTDXQuote(c.Signer.KeyReport)
	if err != nil {
		return nil, fail("eat.signer", fmt.Errorf("key quote: %w", err))
	}
	chain, err := tdxverify.ExtractChainFromQuote(kq)
	if err != nil {
		return nil, fail("eat.signer.tdx.chain", err)
	}
	if err := tdxQuoteSigned(kq, chain, t, o); err != nil {
		ce := err.(*CheckError)
		ce.Check = "eat.signer." + ce.Check
		return nil, ce
	}
	want := attest.KeyReportData(c.Signer.Key)
	if got := kq.GetTdQuoteBody().GetReportData(); !bytes.Equal(got, want[:]) {
		return nil, mismatch("eat.signer.report_data", hexs(got), hexs(want[:]))
	}
	mainChain, err := tdxverify.ExtractChainFromQuote(main)
	if err != nil {
		return nil, fail("eat.signer.same_td", err)
	}
	a, b := kq.GetTdQuoteBody(), main.GetTdQuoteBody()
	same := bytes.Equal(chain.PCKCertificate.Raw, mainChain.PCKCertificate.Raw) &&
		bytes.Equal(a.GetMrTd(), b.GetMrTd()) && bytes.Equal(a.GetMrSeam(), b.GetMrSeam()) &&
		bytes.Equal(a.GetTdAttributes(), b.GetTdAttributes()) && bytes.Equal(a.GetXfam(), b.GetXfam()) &&
		bytes.Equal(a.GetMrConfigId(), b.GetMrConfigId()) && bytes.Equal(a.GetMrOwner(), b.GetMrOwner()) &&
		bytes.Equal(a.GetMrOwnerConfig(), b.GetMrOwnerConfig())
	if !same {
		return nil, mismatch("eat.signer.same_td", "key quote from another platform or TD", "the evidence's PCK certificate, MRTD, MRSEAM, attributes and MRCONFIGID/MROWNER*")
	}
	r.pass("eat.signer")
	return key, nil
}

func parseP256(spki []byte) (*ecdsa.PublicKey, error) {
	pk, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, err
	}
	key, ok := pk.(*ecdsa.PublicKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, errors.New("signing key is not ECDSA P-256")
	}
	return key, nil
}

// checkTDXClaims makes sure x-cocos-tdx says what the verified quote says.
func checkTDXClaims(r *Result, c *eat.Claims) error {
	x := r.TDX
	if c.TDX == nil {
		return mismatch("eat.claims", "no x-cocos-tdx", "the TDX quote's claims")
	}
	le := func(b []byte) uint64 {
		return binary.LittleEndian.Uint64(append(append([]byte{}, b...), make([]byte, 8)...)[:8])
	}
	ok := bytes.Equal(c.TDX.MRTD, x.MRTD) && bytes.Equal(c.Measurements, x.MRTD) && bytes.Equal(c.TDX.MRSEAM, x.MRSEAM) &&
		bytes.Equal(c.TDX.RTMR0, x.RTMR[0]) && bytes.Equal(c.TDX.RTMR1, x.RTMR[1]) && bytes.Equal(c.TDX.RTMR2, x.RTMR[2]) &&
		bytes.Equal(c.TDX.RTMR3, x.RTMR[3]) && c.TDX.TDAttributes == le(x.Attributes) && c.TDX.XFAM == le(x.XFAM) &&
		bytes.Equal(c.TDX.MRConfigID, x.MRConfigID) && bytes.Equal(c.TDX.MROwner, x.MROwner) && bytes.Equal(c.TDX.MROwnerConfig, x.MROwnerConfig)
	if !ok {
		return mismatch("eat.claims x-cocos-tdx", "registers differing from the quote", "the quote's values")
	}
	return nil
}
