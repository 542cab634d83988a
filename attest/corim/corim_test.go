package corim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"
	"github.com/veraison/go-cose"
)

var update = flag.Bool("update", false, "rewrite testdata/*.cbor")

// The Cocos vectors are built here from the structure the reference
// (cocos-pull-and-platforms.md §3.2) records of Cocos's generator output,
// with plain CBOR values: not with this package's encoder, so a codec bug
// cannot hide behind a matching encoder.
var (
	cocosClass    = uuid.MustParse("0f3e7a52-4d1b-4c3e-9a57-3c2b1d0e9f11")
	cocosMKey     = uuid.MustParse("5b8c1d2e-3f40-4a51-8b62-7c9d0e1f2a33")
	cocosInstance = ProductInstance("Milan")
)

func cocosCoRIM(platform string, measurements []any) map[int64]any {
	env := map[int64]any{0: map[int64]any{0: cbor.Tag{Number: 37, Content: cocosClass[:]}}, 1: cbor.Tag{Number: 37, Content: cocosInstance.Value}}
	comid := map[int64]any{
		1: map[int64]any{0: platform + "-tag-6b1f2d8e-4a3c-4e5d-9f60-718293a4b5c6"},
		4: map[int64]any{0: []any{[]any{env, measurements}}},
	}
	cb, err := cbor.Marshal(comid)
	if err != nil {
		panic(err)
	}
	return map[int64]any{0: platform + "-corim-1a2b3c4d-5e6f-4a70-8b91-a2b3c4d5e6f7", 1: []any{cbor.Tag{Number: 506, Content: cb}}}
}

func cocosMeasurement(mval map[int64]any) map[int64]any {
	return map[int64]any{0: cbor.Tag{Number: 37, Content: cocosMKey[:]}, 1: mval}
}

var digest32 = bytes.Repeat([]byte{0xab}, 32)

func mustCBOR(t testing.TB, v any) []byte {
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cocosSigner is a fixed P-256 key standing for a Cocos operator's --signing-key.
func cocosSigner(t testing.TB) *ecdsa.PrivateKey {
	b, err := os.ReadFile("testdata/cocos-signing-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// cocosSign signs payload as Cocos does: protected {1: -7, 3: content type,
// 8: corim-meta as a bstr with an empty signer name}, unprotected {}.
func cocosSign(t testing.TB, payload []byte, key *ecdsa.PrivateKey) []byte {
	meta := mustCBOR(t, map[int64]any{0: map[int64]any{0: ""}})
	msg := cose.NewSign1Message()
	msg.Headers.Protected.SetAlgorithm(cose.AlgorithmES256)
	msg.Headers.Protected[cose.HeaderLabelContentType] = ContentType
	msg.Headers.Protected[int64(8)] = meta
	msg.Payload = payload
	s, err := cose.NewSigner(cose.AlgorithmES256, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.Sign(rand.Reader, nil, s); err != nil {
		t.Fatal(err)
	}
	b, err := msg.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// golden returns testdata/name, writing build() there first with -update.
func golden(t *testing.T, name string, build func() []byte) []byte {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, build(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update once)", err)
	}
	return b
}

func cocosVectors(t *testing.T) map[string][]byte {
	return map[string][]byte{
		// snp/tdx with Cocos's defaults: every 48-byte digest dropped, no tags.
		"cocos-snp-default.cbor": golden(t, "cocos-snp-default.cbor", func() []byte {
			return mustCBOR(t, map[int64]any{0: "snp-corim-1a2b3c4d-5e6f-4a70-8b91-a2b3c4d5e6f7", 1: nil})
		}),
		// snp --svn 3: the SVN survives, the 48-byte measurement does not.
		"cocos-snp-svn.cbor": golden(t, "cocos-snp-svn.cbor", func() []byte {
			return mustCBOR(t, cocosCoRIM("snp", []any{cocosMeasurement(map[int64]any{1: cbor.Tag{Number: 552, Content: 3}})}))
		}),
		// a 32-byte --measurement, which Cocos does encode (as sha-256).
		"cocos-snp-32.cbor": golden(t, "cocos-snp-32.cbor", func() []byte {
			return mustCBOR(t, cocosCoRIM("snp", []any{cocosMeasurement(map[int64]any{1: cbor.Tag{Number: 552, Content: 3}, 2: []any{[]any{1, digest32}}})}))
		}),
		"cocos-snp-32-signed.cbor": golden(t, "cocos-snp-32-signed.cbor", func() []byte {
			return cocosSign(t, mustCBOR(t, cocosCoRIM("snp", []any{cocosMeasurement(map[int64]any{1: cbor.Tag{Number: 552, Content: 3}, 2: []any{[]any{1, digest32}}})})), cocosSigner(t))
		}),
	}
}

func checkName(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Check
	}
	return ""
}

func TestCocosVectors(t *testing.T) {
	v := cocosVectors(t)
	key := cocosSigner(t)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	unsigned := LoadOptions{AllowUnsigned: true}
	for _, tc := range []struct {
		file  string
		opts  LoadOptions
		check string // "" = accepted
	}{
		{"cocos-snp-default.cbor", unsigned, "corim.empty"},
		{"cocos-snp-svn.cbor", unsigned, "corim.empty"},
		{"cocos-snp-32.cbor", unsigned, ""},
		{"cocos-snp-32.cbor", LoadOptions{}, "corim.unsigned"},
		{"cocos-snp-32-signed.cbor", LoadOptions{TrustedKeys: []crypto.PublicKey{&key.PublicKey}}, ""},
		{"cocos-snp-32-signed.cbor", LoadOptions{TrustedKeys: []crypto.PublicKey{&other.PublicKey}}, "corim.signature"},
		{"cocos-snp-32-signed.cbor", LoadOptions{}, "corim.signature"},
		{"cocos-snp-32-signed.cbor", unsigned, ""},
	} {
		t.Run(tc.file+"/"+tc.check, func(t *testing.T) {
			c, err := Load(v[tc.file], tc.opts)
			if got := checkName(err); got != tc.check {
				t.Fatalf("Load: %v (check %q), want check %q", err, got, tc.check)
			}
			if err != nil {
				return
			}
			ts := c.Triples()
			if len(ts) != 1 || len(ts[0].Measurements) != 1 {
				t.Fatalf("triples %+v", ts)
			}
			m := ts[0].Measurements[0]
			if m.Key.Kind != KeyUUID || m.Key.Labelled() || len(m.Digests) != 1 || m.Digests[0].Alg != AlgSHA256 ||
				!bytes.Equal(m.Digests[0].Value, digest32) || m.SVN == nil || m.SVN.Min || m.SVN.Value != 3 {
				t.Fatalf("measurement %+v", m)
			}
			if !bytes.Equal(ts[0].Env.Instance.Value, cocosInstance.Value) || ts[0].Env.Model != "" {
				t.Fatalf("environment %+v", ts[0].Env)
			}
			if c.Signed != (len(tc.opts.TrustedKeys) > 0) {
				t.Fatalf("Signed = %v", c.Signed)
			}
		})
	}
}

func TestSignedTampered(t *testing.T) {
	key := cocosSigner(t)
	b := bytes.Clone(cocosVectors(t)["cocos-snp-32-signed.cbor"])
	i := bytes.Index(b, digest32)
	if i < 0 {
		t.Fatal("digest not found in the signed CoRIM")
	}
	b[i] ^= 1
	_, err := Load(b, LoadOptions{TrustedKeys: []crypto.PublicKey{&key.PublicKey}})
	if checkName(err) != "corim.signature" {
		t.Fatalf("tampered payload: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func fixedIDs(c *CoRIM) *CoRIM {
	c.ID = "snp-corim-00000000-0000-4000-8000-000000000001"
	c.Tags[0].TagID = "snp-tag-00000000-0000-4000-8000-000000000002"
	return c
}

func TestGenerateRoundTrip(t *testing.T) {
	meas := bytes.Repeat([]byte{0x11}, 48)
	snp, err := SNPTriple(SNPValues{Measurements: [][]byte{meas}, MinGuestSVN: ptr[uint64](2), Policy: ptr[uint64](0x30000), HostData: digest32, MinTCB: ptr[uint64](0x7300000000000803), Product: "Milan"})
	if err != nil {
		t.Fatal(err)
	}
	tdx, err := TDXTriple(TDXValues{MRTD: meas, RTMRs: [][]byte{meas, nil, meas}, MRSEAM: meas, Attributes: ptr[uint64](0), XFAM: ptr[uint64](0xe7)})
	if err != nil {
		t.Fatal(err)
	}
	refs, keys, err := VTPMTriples(VTPMValues{PCRs: map[uint32][][]byte{16: {digest32}, 0: {meas}}, AKs: [][]byte{digest32}, ChildTable: digest32, Manifest: digest32})
	if err != nil {
		t.Fatal(err)
	}
	c := fixedIDs(New("snp", append([]RefTriple{snp, tdx}, refs...), keys))
	c.NotAfter = time.Unix(2000000000, 0)
	b, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	want := golden(t, "cvmd-all.cbor", func() []byte { return b })
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding changed:\n got %x\nwant %x", b, want)
	}
	got, err := Load(b, LoadOptions{AllowUnsigned: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Signed, c.Signer = false, ""
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, c)
	}
	// Signed with our encoder, loaded with the signer's key.
	key := cocosSigner(t)
	sb, err := Sign(c, key, "cvmd test")
	if err != nil {
		t.Fatal(err)
	}
	got, err = Load(sb, LoadOptions{TrustedKeys: []crypto.PublicKey{&key.PublicKey}})
	if err != nil || !got.Signed || got.Signer != "cvmd test" {
		t.Fatalf("signed: %+v, %v", got, err)
	}
}

func TestValidity(t *testing.T) {
	c := &CoRIM{NotBefore: time.Unix(1000, 0), NotAfter: time.Unix(2000, 0)}
	for _, tc := range []struct {
		now  int64
		want string
	}{{500, "corim.validity"}, {1500, ""}, {2500, "corim.validity"}} {
		if got := checkName(c.Valid(time.Unix(tc.now, 0))); got != tc.want {
			t.Errorf("at %d: %q, want %q", tc.now, got, tc.want)
		}
	}
}

func TestRefused(t *testing.T) {
	m := func(mval map[int64]any) []byte {
		return mustCBOR(t, cocosCoRIM("snp", []any{cocosMeasurement(mval)}))
	}
	for _, tc := range []struct {
		name  string
		in    []byte
		check string
		text  string
	}{
		{"raw value mask", m(map[int64]any{2: []any{[]any{1, digest32}}, 5: []byte{1}}), "corim.unsupported", "key 5"},
		{"flags", m(map[int64]any{2: []any{[]any{1, digest32}}, 3: 1}), "corim.unsupported", "key 3"},
		{"digest wrong size", m(map[int64]any{2: []any{[]any{1, make([]byte, 48)}}}), "corim.decode", "sha-256 digest of 48 bytes"},
		{"unknown digest alg", m(map[int64]any{2: []any{[]any{99, digest32}}}), "corim.unsupported", "algorithm 99"},
		{"dependent rims", mustCBOR(t, map[int64]any{0: "x", 1: []any{}, 2: []any{}}), "corim.unsupported", "key 2"},
		{"coswid", mustCBOR(t, map[int64]any{0: "x", 1: []any{cbor.Tag{Number: 505, Content: []byte{0xa0}}}}), "corim.unsupported", "CoSWID"},
		{"foreign profile", mustCBOR(t, map[int64]any{0: "x", 1: []any{}, 3: cbor.Tag{Number: 32, Content: "https://example.com/p"}}), "corim.unsupported", "profile"},
		{"not CBOR", []byte("{\"policy\":{}}"), "corim.decode", ""},
		{"duplicate key", []byte{0xa2, 0x00, 0x61, 'x', 0x00, 0x61, 'y'}, "corim.decode", "duplicate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.in, LoadOptions{AllowUnsigned: true})
			if checkName(err) != tc.check || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want check %s mentioning %q", err, tc.check, tc.text)
			}
		})
	}
}

func FuzzLoad(f *testing.F) {
	for _, name := range []string{"cocos-snp-default.cbor", "cocos-snp-svn.cbor", "cocos-snp-32.cbor", "cocos-snp-32-signed.cbor", "cvmd-all.cbor"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	key := cocosSigner(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, o := range []LoadOptions{{AllowUnsigned: true}, {TrustedKeys: []crypto.PublicKey{&key.PublicKey}}} {
			c, err := Load(b, o)
			if err != nil {
				if checkName(err) == "" {
					t.Fatalf("refusal without a check name: %v", err)
				}
				continue
			}
			if !c.HasMeasurement() {
				t.Fatal("accepted a CoRIM without a measurement")
			}
			// What loads re-encodes and loads again the same.
			c.Signed, c.Signer = false, ""
			re, err := Marshal(c)
			if err != nil {
				t.Fatalf("re-encoding an accepted CoRIM: %v", err)
			}
			c2, err := Load(re, LoadOptions{AllowUnsigned: true})
			if err != nil || !reflect.DeepEqual(c, c2) {
				t.Fatalf("reload: %v\n%+v\n%+v", err, c, c2)
			}
		}
	})
}
