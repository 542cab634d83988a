package rolesig

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
)

func TestSignVerifyEveryKeyType(t *testing.T) {
	for _, kind := range KeyTypes {
		t.Run(kind, func(t *testing.T) {
			privPEM, pubPEM, err := NewKey(kind)
			if err != nil {
				t.Fatal(err)
			}
			wantType := map[string]string{"rsa": "PRIVATE KEY", "ecdsa": "EC PRIVATE KEY", "ed25519": "PRIVATE KEY"}[kind]
			if b, _ := pem.Decode(privPEM); b == nil || b.Type != wantType {
				t.Fatalf("private PEM type %v, want %q", b, wantType)
			}
			priv, err := ParsePrivateKeyPEM(privPEM)
			if err != nil {
				t.Fatal(err)
			}
			pub, der, err := ParsePublicKeyPEM(pubPEM)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x509.ParsePKIXPublicKey(der); err != nil {
				t.Fatal(err)
			}
			sig, err := Sign(priv, DataProvider)
			if err != nil {
				t.Fatal(err)
			}
			if !Verify(pub, DataProvider, sig) {
				t.Error("own signature refused")
			}
			if Verify(pub, Consumer, sig) {
				t.Error("signature of data-provider accepted for consumer")
			}
			sig[len(sig)-1] ^= 1
			if Verify(pub, DataProvider, sig) {
				t.Error("corrupted signature accepted")
			}
		})
	}
}

func TestParsePrivateKeyRefusesOtherTypes(t *testing.T) {
	for _, data := range []string{"", "garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		if _, err := ParsePrivateKeyPEM([]byte(data)); err == nil {
			t.Errorf("%q accepted", data)
		}
	}
}
