package verify_test

import (
	"bytes"
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/corim"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

// azureFixture is a simulated Azure CVM: the TPM simulator provisioned with
// an HCL report of a simulated SEV-SNP or TDX.
func azureFixture(t *testing.T, tee string) (*attest.Attester, *attest.TPM, verify.Options) {
	t.Helper()
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rw.Close() })
	a := &attest.Attester{Simulated: true, Azure: &attest.AzureVM{}}
	var o verify.Options
	switch tee {
	case "snp":
		s := mustSNP(t)
		if err := sim.ProvisionAzureSNP(rw, s); err != nil {
			t.Fatal(err)
		}
		a.Azure.SNPCerts = s.SNPCertChain
		o.AMDBundle = s.RootsPEM()
	case "tdx":
		x, err := sim.NewTDX(sim.TDXOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := sim.ProvisionAzureTDX(rw, x); err != nil {
			t.Fatal(err)
		}
		a.Azure.TDXQuote, a.TDXCollateral = x.QuoteTDReport, x.Collateral
	}
	tp, err := attest.NewTPM(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.Close)
	a.TPM = tp
	o.AllowSimulated = true
	return a, tp, o
}

func TestAzure(t *testing.T) {
	for _, tee := range []string{"snp", "tdx"} {
		t.Run(tee, func(t *testing.T) {
			a, tp, base := azureFixture(t, tee)
			teeN, nonce := random(t, 64), random(t, 32)
			tok, err := a.Attest(attest.Request{ReportData: teeN, Nonce: nonce, Platform: attest.Azure})
			if err != nil {
				t.Fatal(err)
			}
			o := base
			o.ReportData, o.Nonce = teeN, nonce
			r, err := verify.Token(tok, o)
			if err != nil {
				t.Fatal(err)
			}
			if r.Platform != attest.Azure || !r.Simulated || (tee == "snp") != (r.SNP != nil) || (tee == "tdx") != (r.TDX != nil) || r.PCRs == nil {
				t.Fatalf("result %+v", r)
			}
			for _, c := range []string{"azure.report_data", "azure.ak (certified by the HCL report's AK)", "vtpm.quote", "eat.signature"} {
				if !contains(r.Checks, c) {
					t.Errorf("check %q did not run: %v", c, r.Checks)
				}
			}
			// Without the expected nonces the binding is still checked.
			if _, err := verify.Token(tok, base); err != nil {
				t.Fatal(err)
			}
			var launch []byte
			if r.SNP != nil {
				launch = r.SNP.GetMeasurement()
			} else {
				launch = r.TDX.MRTD
			}
			corimWith := func(m []byte) *verify.Policy {
				var tr corim.RefTriple
				var err error
				if tee == "snp" {
					tr, err = corim.SNPTriple(corim.SNPValues{Measurements: [][]byte{m}})
				} else {
					tr, err = corim.TDXTriple(corim.TDXValues{MRTD: m})
				}
				if err != nil {
					t.Fatal(err)
				}
				return &verify.Policy{CoRIM: corim.New("azure", []corim.RefTriple{tr}, nil)}
			}
			oc := o
			oc.Policy = corimWith(launch)
			if _, err := verify.Token(tok, oc); err != nil {
				t.Fatalf("CoRIM with the launch measurement: %v", err)
			}

			c := decode(t, tok)
			tamperedHCL := bytes.Clone(c.HCLReport)
			i := bytes.Index(tamperedHCL, []byte(`"console-enabled":false`))
			copy(tamperedHCL[i:], `"console-enabled":true `)
			badSig := *c.AKCertify
			badSig.Signature = bytes.Clone(badSig.Signature)
			badSig.Signature[len(badSig.Signature)-1] ^= 1
			measCheck := map[string]string{"snp": "corim.snp.measurement", "tdx": "corim.tdx.mrtd"}[tee]
			for _, tc := range []struct {
				name  string
				tok   func() []byte
				edit  func(*verify.Options)
				check string
			}{
				{"wrong vTPM nonce", nil, func(o *verify.Options) { o.Nonce = random(t, 32) }, "eat.nonce"},
				{"wrong teeNonce", nil, func(o *verify.Options) { o.ReportData = random(t, 64) }, "azure.nonce"},
				{"wrong measurement (CoRIM)", nil, func(o *verify.Options) { o.Policy = corimWith(make([]byte, 48)) }, measCheck},
				{"simulated refused", nil, func(o *verify.Options) { o.AllowSimulated = false }, "simulated"},
				{"runtime claims changed", func() []byte {
					cc := decode(t, tok)
					cc.HCLReport = tamperedHCL
					return resignWith(t, tp, cc)
				}, nil, "azure.report_data"},
				{"certification not by the HCL AK", func() []byte {
					cc := decode(t, tok)
					cc.AKCertify = &badSig
					return resignWith(t, tp, cc)
				}, nil, "azure.ak"},
				{"no certification", func() []byte {
					cc := decode(t, tok)
					cc.AKCertify = nil
					return resignWith(t, tp, cc)
				}, nil, "azure.ak"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					tk := tok
					if tc.tok != nil {
						tk = tc.tok()
					}
					oo := o
					if tc.edit != nil {
						tc.edit(&oo)
					}
					_, err := verify.Token(tk, oo)
					wantCheck(t, err, tc.check)
				})
			}
		})
	}
}
