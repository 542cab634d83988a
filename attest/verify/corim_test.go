package verify_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/corim"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

func ptr[T any](v T) *T { return &v }

func simMeasurement() []byte {
	m := sim.DefaultMeasurement()
	return m[:]
}

// cocosStyle is a CoRIM shaped as Cocos's generator writes one (random UUID
// class id and keys, no model), but holding a 48-byte digest, which Cocos's
// own generator would drop.
func cocosStyle(measurement []byte, svn *uint64) *corim.CoRIM {
	m := corim.Measurement{Key: corim.MKey{Kind: corim.KeyUUID, UUID: corim.NewUUID()}, Digests: []corim.Digest{{Alg: corim.AlgSHA384, Value: measurement}}}
	if svn != nil {
		m.SVN = &corim.SVN{Value: *svn}
	}
	return &corim.CoRIM{ID: "snp-corim-" + uuid.NewString(), Tags: []corim.CoMID{{TagID: "snp-tag-x", RefValues: []corim.RefTriple{{
		Env:          corim.Environment{ClassID: &corim.TypedBytes{Tag: corim.TagUUID, Value: corim.NewUUID()}, Instance: corim.ProductInstance("Milan")},
		Measurements: []corim.Measurement{m},
	}}}}}
}

func TestCoRIMSNPvTPM(t *testing.T) {
	f := newFixture(t, true, &sim.SNPOptions{GuestSVN: 3})
	tee, nonce := random(t, 64), random(t, 32)
	tok, err := f.a.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: attest.SNPvTPM})
	if err != nil {
		t.Fatal(err)
	}
	r0, err := verify.Token(tok, verify.Options{ReportData: tee, Nonce: nonce, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true})
	if err != nil {
		t.Fatal(err)
	}
	table, _ := hex.DecodeString(f.table)
	good := func(mut func(*corim.SNPValues, *corim.VTPMValues)) *corim.CoRIM {
		sv := corim.SNPValues{Measurements: [][]byte{simMeasurement()}, MinGuestSVN: ptr[uint64](3), Policy: ptr[uint64](sim.DefaultPolicy), HostData: make([]byte, 32), Product: "Milan"}
		vv := corim.VTPMValues{PCRs: map[uint32][][]byte{16: {r0.PCRs[16]}, 15: {r0.PCRs[15], r0.PCRs384[15]}}, ChildTable: table}
		if mut != nil {
			mut(&sv, &vv)
		}
		snp, err := corim.SNPTriple(sv)
		if err != nil {
			t.Fatal(err)
		}
		refs, keys, err := corim.VTPMTriples(vv)
		if err != nil {
			t.Fatal(err)
		}
		return corim.New("snp", append([]corim.RefTriple{snp}, refs...), keys)
	}
	run := func(c *corim.CoRIM) (*verify.Result, error) {
		// Through the file format, as the CLI reads it.
		b, err := corim.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		p, err := verify.LoadPolicy(b, verify.PolicyOptions{AllowUnsignedCoRIM: true})
		if err != nil {
			t.Fatal(err)
		}
		return verify.Token(tok, verify.Options{ReportData: tee, Nonce: nonce, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true, Policy: p})
	}
	r, err := run(good(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"corim.snp", "corim.vtpm", "corim.cvmd"} {
		if !contains(r.Checks, c) {
			t.Errorf("check %s did not run: %v", c, r.Checks)
		}
	}
	// Two acceptable measurements: either matches.
	if _, err := run(good(func(s *corim.SNPValues, _ *corim.VTPMValues) {
		s.Measurements = [][]byte{make([]byte, 48), simMeasurement()}
	})); err != nil {
		t.Fatal(err)
	}
	// Cocos's shape (UUID keys, no model) with the right measurement.
	if _, err := run(cocosStyle(simMeasurement(), ptr[uint64](3))); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		c     *corim.CoRIM
		check string
	}{
		{"wrong measurement", good(func(s *corim.SNPValues, _ *corim.VTPMValues) { s.Measurements = [][]byte{make([]byte, 48)} }), "corim.snp.measurement"},
		{"guest SVN too low", good(func(s *corim.SNPValues, _ *corim.VTPMValues) { s.MinGuestSVN = ptr[uint64](4) }), "corim.snp.guest_svn"},
		{"wrong policy", good(func(s *corim.SNPValues, _ *corim.VTPMValues) { s.Policy = ptr[uint64](0x30001) }), "corim.snp.policy"},
		{"wrong host data", good(func(s *corim.SNPValues, _ *corim.VTPMValues) { s.HostData = bytes.Repeat([]byte{1}, 32) }), "corim.snp.host_data"},
		{"TCB too low", good(func(s *corim.SNPValues, _ *corim.VTPMValues) { s.MinTCB = ptr(r0.SNP.GetReportedTcb() + 1<<48) }), "corim.snp.reported_tcb"},
		{"other product", good(func(s *corim.SNPValues, _ *corim.VTPMValues) { s.Product = "Genoa" }), "corim.environment instance"},
		{"wrong PCR 16", good(func(_ *corim.SNPValues, v *corim.VTPMValues) { v.PCRs[16] = [][]byte{make([]byte, 32)} }), "corim.vtpm.pcr16"},
		{"wrong child table", good(func(_ *corim.SNPValues, v *corim.VTPMValues) { v.ChildTable = make([]byte, 32) }), "corim.cvmd.childtable"},
		{"Cocos shape, wrong measurement", cocosStyle(make([]byte, 48), nil), "corim.snp.measurement"},
		{"Cocos shape, other SVN", cocosStyle(simMeasurement(), ptr[uint64](2)), "corim.snp.measurement"},
		{"TDX values for SNP evidence", corim.New("tdx", []corim.RefTriple{mustTDX(t)}, nil), "corim.tdx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(tc.c)
			wantCheck(t, err, tc.check)
		})
	}

	t.Run("expired", func(t *testing.T) {
		c := good(nil)
		c.NotAfter = time.Now().Add(-time.Minute)
		_, err := run(c)
		wantCheck(t, err, "corim.validity")
	})
}

func mustTDX(t *testing.T) corim.RefTriple {
	tr, err := corim.TDXTriple(corim.TDXValues{MRTD: make([]byte, 48)})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestCoRIMVTPMAK: vTPM-only evidence has no hardware root; a CoRIM's
// attest-key triple is what makes its AK trusted.
func TestCoRIMVTPMAK(t *testing.T) {
	f := newFixture(t, true, nil)
	nonce := random(t, 32)
	tok, err := f.a.Attest(attest.Request{Nonce: nonce, Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	ak, _ := hex.DecodeString(f.akPin())
	r0, err := verify.Token(tok, verify.Options{Nonce: nonce, AllowSimulated: true, Policy: &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		v     corim.VTPMValues
		check string
	}{
		{"AK and PCR", corim.VTPMValues{PCRs: map[uint32][][]byte{15: {r0.PCRs[15]}}, AKs: [][]byte{ak}}, ""},
		{"other AK", corim.VTPMValues{PCRs: map[uint32][][]byte{15: {r0.PCRs[15]}}, AKs: [][]byte{make([]byte, 32)}}, "vtpm.ak"},
		{"no AK", corim.VTPMValues{PCRs: map[uint32][][]byte{15: {r0.PCRs[15]}}}, "vtpm.ak"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refs, keys, err := corim.VTPMTriples(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			_, err = verify.Token(tok, verify.Options{Nonce: nonce, AllowSimulated: true, Policy: &verify.Policy{CoRIM: corim.New("vtpm", refs, keys)}})
			if tc.check == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCheck(t, err, tc.check)
		})
	}
	// Unkeyed (Cocos-shaped) values describe a TEE report this evidence lacks.
	_, err = verify.Token(tok, verify.Options{Nonce: nonce, AllowSimulated: true, Policy: &verify.Policy{CoRIM: cocosStyle(simMeasurement(), nil),
		CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}}}})
	wantCheck(t, err, "corim.environment")
}

func TestLoadPolicyFormats(t *testing.T) {
	c := cocosStyle(simMeasurement(), nil)
	unsigned, err := corim.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signed, err := corim.Sign(c, key, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		in    []byte
		o     verify.PolicyOptions
		check string
	}{
		{"JSON", []byte(` {"cvmd":{}}`), verify.PolicyOptions{}, ""},
		{"unsigned CoRIM without the flag", unsigned, verify.PolicyOptions{}, "corim.unsigned"},
		{"unsigned CoRIM with the flag", unsigned, verify.PolicyOptions{AllowUnsignedCoRIM: true}, ""},
		{"signed CoRIM, its key", signed, verify.PolicyOptions{CoRIMKeys: []crypto.PublicKey{&key.PublicKey}}, ""},
		{"signed CoRIM, another key", signed, verify.PolicyOptions{CoRIMKeys: []crypto.PublicKey{&other.PublicKey}}, "corim.signature"},
		{"signed CoRIM, no key", signed, verify.PolicyOptions{}, "corim.signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := verify.LoadPolicy(tc.in, tc.o)
			if tc.check == "" {
				if err != nil || p == nil {
					t.Fatalf("%v", err)
				}
				return
			}
			wantCheck(t, err, tc.check)
		})
	}
}
