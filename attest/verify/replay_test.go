package verify_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

// TestTokenTime: iat and exp are checked against the verifier's clock with
// the stated skew.
func TestTokenTime(t *testing.T) {
	f := newFixture(t, true, nil)
	nonce := random(t, 32)
	now := time.Now()
	pin := &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}}}
	at := func(issued time.Time) []byte {
		f.a.Now = func() time.Time { return issued }
		defer func() { f.a.Now = nil }()
		tok, err := f.a.Attest(attest.Request{Nonce: nonce, Platform: attest.VTPM})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct {
		name   string
		issued time.Duration // relative to now
		skew   time.Duration
		check  string
	}{
		{"fresh", 0, 0, ""},
		{"expired 30 s ago, default skew 60 s", -eat.Validity - 30*time.Second, 0, ""},
		{"expired 30 s ago, skew 10 s", -eat.Validity - 30*time.Second, 10 * time.Second, "eat.exp"},
		{"expired long ago", -time.Hour, 0, "eat.exp"},
		{"issued 30 s ahead", 30 * time.Second, 0, ""},
		{"issued 10 min ahead", 10 * time.Minute, 0, "eat.iat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify.Token(at(now.Add(tc.issued)), verify.Options{Nonce: nonce, Policy: pin, AllowSimulated: true, Now: now, ClockSkew: tc.skew})
			if tc.check == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCheck(t, err, tc.check)
		})
	}
	// A token whose validity is stretched by whoever holds the AK.
	_, err := verify.Token(stretch(t, f, at(now), 48*time.Hour), verify.Options{Nonce: nonce, Policy: pin, AllowSimulated: true, Now: now})
	wantCheck(t, err, "eat.time")
}

// stretch re-signs tok with exp = iat + d.
func stretch(t *testing.T, f *fixture, tok []byte, d time.Duration) []byte {
	msg, c, err := eat.Decode(tok)
	if err != nil {
		t.Fatal(err)
	}
	c.ExpiresAt = c.IssuedAt + int64(d/time.Second)
	b, err := cbor.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	out, err := eat.SignSign1(b, msg.Kid, f.tpm.Sign)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sign1 is the COSE_Sign1 array, for tampering.
type sign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int64]any
	Payload     []byte
	Signature   []byte
}

func tamper(t *testing.T, tok []byte, edit func(*sign1)) []byte {
	t.Helper()
	var tag cbor.RawTag
	if err := cbor.Unmarshal(tok, &tag); err != nil {
		t.Fatal(err)
	}
	var m sign1
	if err := cbor.Unmarshal(tag.Content, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	out, err := cbor.Marshal(cbor.Tag{Number: 18, Content: m})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTamperedToken: a kid outside the signature, a changed kid, a changed
// body — each refused by the check that sees it.
func TestTamperedToken(t *testing.T) {
	f := newFixture(t, true, &sim.SNPOptions{})
	tee, nonce := random(t, 64), random(t, 32)
	o := verify.Options{ReportData: tee, Nonce: nonce, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true}
	for _, p := range []attest.Platform{attest.SNPvTPM, attest.SNP} {
		tok, err := f.a.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: p})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify.Token(tok, o); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name  string
			edit  func(*sign1)
			check string
		}{
			{"unprotected kid added", func(m *sign1) { m.Unprotected[4] = []byte(attest.DefaultIssuer) }, "eat.kid"},
			{"protected kid changed", func(m *sign1) {
				m.Protected, _ = cbor.Marshal(map[int64]any{1: -7, 4: []byte("mallory")})
			}, "eat.kid"},
			{"kid dropped", func(m *sign1) { m.Protected, _ = cbor.Marshal(map[int64]any{1: -7}) }, "eat.signature"},
			{"body changed", func(m *sign1) {
				var c map[any]any
				cbor.Unmarshal(m.Payload, &c)
				c["x-cvmd-boot-id"] = "another boot"
				m.Payload, _ = cbor.Marshal(c)
			}, "eat.signature"},
			{"signature changed", func(m *sign1) { m.Signature = bytes.Repeat([]byte{1}, 64) }, "eat.signature"},
		} {
			t.Run(p.String()+"/"+tc.name, func(t *testing.T) {
				_, err := verify.Token(tamper(t, tok, tc.edit), o)
				wantCheck(t, err, tc.check)
			})
		}
	}
}

// TestBootID: the token names the boot of its measurement log; a verifier
// that knows the boot refuses another (older) one, and the claim cannot
// differ from the quoted log.
func TestBootID(t *testing.T) {
	f := newFixture(t, true, nil)
	nonce := random(t, 32)
	pin := &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}}}
	tok, err := f.a.Attest(attest.Request{Nonce: nonce, Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	r, err := verify.Token(tok, verify.Options{Nonce: nonce, Policy: pin, AllowSimulated: true, BootID: fixtureBoot})
	if err != nil {
		t.Fatal(err)
	}
	if r.BootID != fixtureBoot {
		t.Fatalf("boot id %q", r.BootID)
	}
	_, err = verify.Token(tok, verify.Options{Nonce: nonce, Policy: pin, AllowSimulated: true, BootID: "fedcba9876543210"})
	wantCheck(t, err, "eat.boot_id")
	// Whoever holds the AK cannot claim another boot than the quoted log's.
	c := decode(t, tok)
	c.BootID = "fedcba9876543210"
	_, err = verify.Token(f.resign(t, c), verify.Options{Nonce: nonce, Policy: pin, AllowSimulated: true, BootID: "fedcba9876543210"})
	wantCheck(t, err, "eat.boot_id")
	// SNP without a TPM has no log: the boot id is a signed claim.
	s := &attest.Attester{SNP: mustSNP(t), Simulated: true, Log: func() attest.EventLog { return f.log }}
	stok, err := s.Attest(attest.Request{ReportData: random(t, 64), Platform: attest.SNP})
	if err != nil {
		t.Fatal(err)
	}
	if c := decode(t, stok); c.BootID != fixtureBoot || c.EventLog != nil {
		t.Fatalf("SNP token boot id %q, log %d bytes", c.BootID, len(c.EventLog))
	}
}
