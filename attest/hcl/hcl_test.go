package hcl

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
)

func testReport(t testing.TB, typ uint32) ([]byte, *rsa.PublicKey) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	claims, _ := json.Marshal(RuntimeClaims{Keys: []JWK{RSAJWK("HCLAkPub", &k.PublicKey)}, UserData: strings.Repeat("00", 64)})
	size := map[uint32]int{TypeSNP: SNPReportSize, TypeTDX: TDReportSize}[typ]
	b, err := Build(typ, make([]byte, size), claims)
	if err != nil {
		t.Fatal(err)
	}
	return b, &k.PublicKey
}

func TestRoundTrip(t *testing.T) {
	for _, typ := range []uint32{TypeSNP, TypeTDX} {
		b, pub := testReport(t, typ)
		r, err := Parse(append(b, 0, 0)) // NV indices are padded
		if err != nil {
			t.Fatal(err)
		}
		ak, err := r.AK()
		if err != nil || ak.N.Cmp(pub.N) != 0 || ak.E != pub.E {
			t.Fatalf("AK %v, %v", ak, err)
		}
		if r.Type != typ || len(r.ReportData()) != 64 {
			t.Fatalf("type %d, report data %d bytes", r.Type, len(r.ReportData()))
		}
	}
}

func TestRefused(t *testing.T) {
	good, _ := testReport(t, TypeSNP)
	edit := func(off int, v uint32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"short", good[:100], "at least"},
		{"magic", edit(0, 0x41414141), "signature"},
		{"type", edit(runtimeOffset+8, 3), "report type 3"},
		{"hash type", edit(runtimeOffset+12, 2), "hash type"},
		{"claims too long", edit(runtimeOffset+16, 1<<20), "do not fit"},
		{"data size", edit(runtimeOffset, 4), "runtime data size"},
		{"bad JSON", func() []byte { b := bytes.Clone(good); b[runtimeOffset+runtimeHdrSize] = '['; return b }(), "runtime claims"},
	} {
		if _, err := Parse(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	r, _ := Parse(good)
	r.Claims.Keys = nil
	if _, err := r.AK(); err == nil {
		t.Error("no HCLAkPub accepted")
	}
}

func FuzzParse(f *testing.F) {
	// A fixed key: generating one per fuzz worker would dominate the run.
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(bytes.Repeat([]byte{0xc5}, 256)), E: 65537}
	claims, _ := json.Marshal(RuntimeClaims{Keys: []JWK{RSAJWK("HCLAkPub", pub)}})
	for _, typ := range []uint32{TypeSNP, TypeTDX} {
		b, err := Build(typ, make([]byte, map[uint32]int{TypeSNP: SNPReportSize, TypeTDX: TDReportSize}[typ]), claims)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Parse(b)
		if err != nil {
			return
		}
		if len(r.Hardware) != SNPReportSize && len(r.Hardware) != TDReportSize {
			t.Fatalf("hardware report of %d bytes", len(r.Hardware))
		}
		_ = r.ClaimsHash()
		if k, err := r.AK(); err == nil && k.N.Sign() <= 0 {
			t.Fatal("AK without a modulus")
		}
	})
}
