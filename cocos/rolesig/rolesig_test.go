package rolesig

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
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

// TestChallengeSignatures: a challenge signature verifies only for its own
// role, computation and nonce, and never as a Cocos role signature (nor a
// role signature as a challenge one).
func TestChallengeSignatures(t *testing.T) {
	nonce := bytes.Repeat([]byte{7}, ChallengeNonceSize)
	other := bytes.Repeat([]byte{8}, ChallengeNonceSize)
	for _, kind := range KeyTypes {
		t.Run(kind, func(t *testing.T) {
			privPEM, pubPEM, _ := NewKey(kind)
			priv, _ := ParsePrivateKeyPEM(privPEM)
			pub, _, _ := ParsePublicKeyPEM(pubPEM)
			sig, err := SignChallenge(priv, Consumer, "comp-1", nonce)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name         string
				role, compID string
				nonce        []byte
				want         bool
			}{
				{"its own request", Consumer, "comp-1", nonce, true},
				{"another role", DataProvider, "comp-1", nonce, false},
				{"another computation", Consumer, "comp-2", nonce, false},
				{"another nonce", Consumer, "comp-1", other, false},
				{"fields shifted across the boundary", Consumer + "c", "omp-1", nonce, false},
			} {
				if got := VerifyChallenge(pub, tc.role, tc.compID, tc.nonce, sig); got != tc.want {
					t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
				}
			}
			if Verify(pub, Consumer, sig) {
				t.Error("a challenge signature passed as a role signature")
			}
			plain, _ := Sign(priv, Consumer)
			if VerifyChallenge(pub, Consumer, "comp-1", nonce, plain) {
				t.Error("a role signature passed as a challenge signature")
			}
		})
	}
}

// TestChallengeMessageBytes pins the signed bytes (other implementations of
// the client must produce them exactly).
func TestChallengeMessageBytes(t *testing.T) {
	got := hex.EncodeToString(ChallengeMessage("consumer", "c1", []byte{0xab, 0xcd}))
	want := hex.EncodeToString([]byte("cvmd role challenge v1")) + "00000008" + hex.EncodeToString([]byte("consumer")) +
		"00000002" + hex.EncodeToString([]byte("c1")) + "00000002abcd"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
