package verify

import (
	"encoding/pem"
	"testing"

	"github.com/google/go-sev-guest/verify/trust"
)

func FuzzAMDBundle(f *testing.F) {
	r := trust.DefaultRootCerts["Milan"]
	var b []byte
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ProductCerts.Ask.Raw})...)
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ProductCerts.Ark.Raw})...)
	f.Add(b)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs := &roots{byLine: map[string][]*trust.AMDRootCerts{}}
		if err := rs.addBundle(b); err != nil {
			return
		}
		for line, list := range rs.byLine {
			for _, r := range list {
				if r.ProductCerts == nil || r.ProductCerts.Ark == nil || r.ProductCerts.Ask == nil || r.ProductLine != line {
					t.Fatalf("incomplete root for %q", line)
				}
			}
		}
	})
}

func TestRealAMDBundleParses(t *testing.T) {
	r := trust.DefaultRootCerts["Milan"]
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ProductCerts.Ask.Raw})
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ProductCerts.Ark.Raw})...)
	rs := &roots{byLine: map[string][]*trust.AMDRootCerts{}}
	if err := rs.addBundle(b); err != nil || len(rs.byLine["Milan"]) != 1 {
		t.Fatalf("%v %v", err, rs.byLine)
	}
	if !isAMDRoot(rs.byLine["Milan"][0].ProductCerts.Ark) {
		t.Fatal("AMD's Milan ARK not recognised as an AMD root")
	}
}
