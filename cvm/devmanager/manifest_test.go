package devmanager

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

func keyB64(t testing.TB) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	return base64.StdEncoding.EncodeToString(der)
}

func hashArray(b byte) string {
	parts := make([]string, 32)
	for i := range parts {
		parts[i] = fmt.Sprint(b)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

var manifestTests = []struct {
	name    string
	json    string
	wantErr string
}{
	{"cocos form", `{"id":"1","name":"n","datasets":[{"hash":` + hashArray(1) + `,"user_key":"KEY","filename":"iris.csv"}],"algorithm":{"hash":` + hashArray(2) + `,"user_key":"KEY","algo_type":"python","algo_args":["--a","1"]},"result_consumers":[{"user_key":"KEY"}],"agent_config":{"attested_tls":true,"server_key":"k.pem"}}`, ""},
	{"hex hash", `{"id":"1","algorithm":{"hash":"` + strings.Repeat("ab", 32) + `"}}`, ""},
	{"short hash", `{"id":"1","algorithm":{"hash":[1,2,3]}}`, "32"},
	{"unknown field", `{"id":"1","colour":"red"}`, "unknown field"},
	{"trailing data", `{"id":"1"} {}`, "trailing data"},
	{"not json", `id: 1`, "manifest"},
}

func TestParseManifest(t *testing.T) {
	k := keyB64(t)
	for _, tc := range manifestTests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseManifest([]byte(strings.ReplaceAll(tc.json, "KEY", k)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.GetId() != "1" || len(r.GetAlgorithm().GetHash()) != 32 {
				t.Fatalf("parsed %v", r)
			}
		})
	}
}

func FuzzParseManifest(f *testing.F) {
	for _, tc := range manifestTests {
		f.Add([]byte(tc.json))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseManifest(b)
		if err == nil && r == nil {
			t.Fatal("nil request without error")
		}
	})
}
