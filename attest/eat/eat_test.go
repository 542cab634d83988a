package eat_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/cvmd/cvmd/attest/eat"
)

func key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sample() *eat.Claims {
	return &eat.Claims{
		Nonce: bytes.Repeat([]byte{7}, 32), UEID: []byte{1, 2}, DebugStatus: eat.DebugDisabledSinceBoot,
		Measurements: []byte{9}, PlatformType: "vTPM", RawReport: []byte("raw"), IntUse: 1,
		VTPM: &eat.VTPM{PCRs: map[string]string{"sha256:15": "00"}}, Simulated: true,
	}
}

func TestRoundTrip(t *testing.T) {
	k := key(t)
	now := time.Unix(1_800_000_000, 0)
	tok, err := eat.Encode(sample(), "iss", now, eat.KeySigner(k))
	if err != nil {
		t.Fatal(err)
	}
	m, c, err := eat.Decode(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(&k.PublicKey); err != nil {
		t.Fatal(err)
	}
	if c.Issuer != "iss" || c.IssuedAt != now.Unix() || c.ExpiresAt != now.Add(eat.Validity).Unix() ||
		!bytes.Equal(c.Nonce, sample().Nonce) || c.PlatformType != "vTPM" || !c.Simulated || string(m.Kid) != "iss" {
		t.Fatalf("claims %+v", c)
	}
	if err := m.Verify(&key(t).PublicKey); !errors.Is(err, eat.ErrBadSignature) {
		t.Fatalf("other key: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	k := key(t)
	short := sample()
	short.Nonce = []byte{1, 2, 3}
	if _, err := eat.Encode(short, "iss", time.Now(), eat.KeySigner(k)); err == nil {
		t.Fatal("3-byte nonce accepted")
	}
	tok, _ := eat.Encode(sample(), "iss", time.Now(), eat.KeySigner(k))
	for name, b := range map[string][]byte{
		"empty":         {},
		"wrong tag":     append([]byte{0xd1}, tok[1:]...),
		"truncated":     tok[:len(tok)/2],
		"not an array":  {0xd2, 0x01},
		"trailing byte": append(bytes.Clone(tok), 0),
	} {
		if _, _, err := eat.Decode(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecode(f *testing.F) {
	k := key(f)
	tok, err := eat.Encode(sample(), "iss", time.Now(), eat.KeySigner(k))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add(tok[1:]) // untagged
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, c, err := eat.Decode(b)
		if err != nil {
			return
		}
		if c == nil || m == nil {
			t.Fatal("nil result without error")
		}
		m.Verify(&k.PublicKey) // must not panic
	})
}
