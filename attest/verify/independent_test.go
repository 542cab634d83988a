package verify_test

// An EAT decoder written only from the claim table of Cocos's token
// (reference/cocos-protocol.md §5.3) and RFC 8949/9052, sharing no code with
// attest/eat or fxamacker/cbor: if our encoder drifted from the table, this
// is what would notice.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
)

type cborTag struct {
	n uint64
	v any
}

// cborItem decodes one CBOR data item (definite lengths only).
func cborItem(b []byte) (any, []byte, error) {
	if len(b) == 0 {
		return nil, nil, errors.New("short")
	}
	major, info := b[0]>>5, b[0]&31
	b = b[1:]
	var n uint64
	switch {
	case info < 24:
		n = uint64(info)
	case info == 24 && len(b) >= 1:
		n, b = uint64(b[0]), b[1:]
	case info == 25 && len(b) >= 2:
		n, b = uint64(binary.BigEndian.Uint16(b)), b[2:]
	case info == 26 && len(b) >= 4:
		n, b = uint64(binary.BigEndian.Uint32(b)), b[4:]
	case info == 27 && len(b) >= 8:
		n, b = binary.BigEndian.Uint64(b), b[8:]
	default:
		return nil, nil, fmt.Errorf("unsupported additional info %d", info)
	}
	switch major {
	case 0:
		return int64(n), b, nil
	case 1:
		return -1 - int64(n), b, nil
	case 2, 3:
		if uint64(len(b)) < n {
			return nil, nil, errors.New("short string")
		}
		if major == 2 {
			return b[:n], b[n:], nil
		}
		return string(b[:n]), b[n:], nil
	case 4:
		out := []any{}
		for i := uint64(0); i < n; i++ {
			var v any
			var err error
			if v, b, err = cborItem(b); err != nil {
				return nil, nil, err
			}
			out = append(out, v)
		}
		return out, b, nil
	case 5:
		out := map[any]any{}
		for i := uint64(0); i < n; i++ {
			var k, v any
			var err error
			if k, b, err = cborItem(b); err != nil {
				return nil, nil, err
			}
			if v, b, err = cborItem(b); err != nil {
				return nil, nil, err
			}
			out[k] = v
		}
		return out, b, nil
	case 6:
		v, rest, err := cborItem(b)
		return cborTag{n, v}, rest, err
	case 7:
		switch info {
		case 20:
			return false, b, nil
		case 21:
			return true, b, nil
		case 22:
			return nil, b, nil
		}
	}
	return nil, nil, fmt.Errorf("unsupported major %d/%d", major, info)
}

func cborHead(major byte, n int) []byte {
	switch {
	case n < 24:
		return []byte{major<<5 | byte(n)}
	case n < 256:
		return []byte{major<<5 | 24, byte(n)}
	case n < 65536:
		return []byte{major<<5 | 25, byte(n >> 8), byte(n)}
	}
	return []byte{major<<5 | 26, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

// independentDecode returns the claims map and checks the COSE_Sign1 ES256
// signature with the SPKI from the signer claim.
func independentDecode(t *testing.T, tok []byte) map[any]any {
	t.Helper()
	v, rest, err := cborItem(tok)
	if err != nil || len(rest) != 0 {
		t.Fatalf("token is not one CBOR item: %v, %d trailing", err, len(rest))
	}
	tag, ok := v.(cborTag)
	if !ok || tag.n != 18 {
		t.Fatalf("token is %T, want COSE_Sign1 tag 18", v)
	}
	arr, ok := tag.v.([]any)
	if !ok || len(arr) != 4 {
		t.Fatalf("COSE_Sign1 is not a 4-array")
	}
	protected, payload, sig := arr[0].([]byte), arr[2].([]byte), arr[3].([]byte)
	ph, _, err := cborItem(protected)
	if err != nil || ph.(map[any]any)[int64(1)] != int64(-7) {
		t.Fatalf("protected header %v: want {1: -7, 4: kid} (ES256)", ph)
	}
	// The kid is protected (signed), the unprotected header empty.
	if kid, _ := ph.(map[any]any)[int64(4)].([]byte); string(kid) != attest.DefaultIssuer {
		t.Fatalf("protected kid %q, want the issuer", kid)
	}
	if u := arr[1].(map[any]any); len(u) != 0 {
		t.Fatalf("unprotected header %v, want empty", u)
	}
	cv, _, err := cborItem(payload)
	if err != nil {
		t.Fatal(err)
	}
	claims := cv.(map[any]any)
	// Sig_structure = ["Signature1", protected, h'', payload].
	var tbs []byte
	tbs = append(tbs, 0x84)
	tbs = append(append(tbs, cborHead(3, 10)...), "Signature1"...)
	tbs = append(append(tbs, cborHead(2, len(protected))...), protected...)
	tbs = append(tbs, 0x40)
	tbs = append(append(tbs, cborHead(2, len(payload))...), payload...)
	signer := claims["x-cvmd-signer"].(map[any]any)
	pub, err := x509.ParsePKIXPublicKey(signer["key"].([]byte))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(tbs)
	if len(sig) != 64 || !ecdsa.Verify(pub.(*ecdsa.PublicKey), d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("independent ES256 check of the COSE signature failed")
	}
	return claims
}

func TestIndependentDecoder(t *testing.T) {
	f := newFixture(t, true, &sim.SNPOptions{})
	tee, nonce := random(t, 64), random(t, 32)
	for _, p := range []attest.Platform{attest.SNPvTPM, attest.VTPM, attest.SNP} {
		tok, err := f.a.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: p})
		if err != nil {
			t.Fatal(err)
		}
		c := independentDecode(t, tok)
		want := map[any]func(v any) bool{
			int64(1):           func(v any) bool { return v == attest.DefaultIssuer },
			int64(6):           func(v any) bool { _, ok := v.(int64); return ok },
			int64(4):           func(v any) bool { return v.(int64) == c[int64(6)].(int64)+300 },
			int64(10):          func(v any) bool { return bytes.Equal(v.([]byte), nonce) },
			int64(256):         func(v any) bool { _, ok := v.([]byte); return ok },
			int64(263):         func(v any) bool { return v == int64(2) },
			int64(262):         func(v any) bool { return v == int64(1) },
			int64(265):         func(v any) bool { _, ok := v.([]byte); return ok },
			int64(270):         func(v any) bool { s, _ := v.(string); return len(s) > 0 },
			"platform_type":    func(v any) bool { return v == p.String() },
			"raw_report":       func(v any) bool { b, _ := v.([]byte); return len(b) > 0 },
			"x-cvmd-simulated": func(v any) bool { return v == true },
		}
		if p != attest.VTPM {
			want[int64(258)] = func(v any) bool { return v == int64(3704) }
			want["x-cocos-sevsnp"] = func(v any) bool {
				m, _ := v.(map[any]any)
				_, ok := m["measurement"].([]byte)
				_, tcb := m["tcb"].(string)
				return ok && tcb
			}
		}
		if p != attest.SNP {
			want["x-cocos-vtpm"] = func(v any) bool {
				m, _ := v.(map[any]any)
				pcrs, _ := m["pcrs"].(map[any]any)
				_, ok := pcrs["sha256:15"].(string)
				return ok
			}
		}
		for k, ok := range want {
			if v, present := c[k]; !present || !ok(v) {
				t.Errorf("%v: claim %v = %#v does not match the claim table", p, k, c[k])
			}
		}
	}
}
