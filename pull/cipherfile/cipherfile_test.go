package cipherfile

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	mrand "math/rand/v2"
	"testing"
)

// nistVectors are AES-256 GCM vectors: NIST CAVP gcmEncryptExtIV256 entries
// (as carried in the Go standard library's crypto/cipher tests) and test
// cases 13 and 14 of the GCM specification (McGrew and Viega), which NIST's
// SP 800-38D validation uses. result = ciphertext ‖ tag.
var nistVectors = []struct {
	name                           string
	key, nonce, plaintext, ad, res string
}{
	{"gcm-spec TC13 empty", "0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
	{"gcm-spec TC14 one block", "0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000", "00000000000000000000000000000000", "", "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"},
	{"cavp key=32 pt=0", "5394e890d37ba55ec9d5f327f15680f6a63ef5279c79331643ad0af6d2623525", "3c819d9a9bed087615030b65", "", "", "d9b260d4bc4630733ffb642f5ce45726"},
	{"cavp key=32 pt=16", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "54cc7dc2c37ec006bcc6d1da", "007c5e5b3e59df24a7c355584fc1518d", "", "d50b9e252b70945d4240d351677eb10f937cdaef6f2822b6a3191654ba41b197"},
	{"cavp key=32 pt=13", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "12823ab601c350ea4bc2488c", "793cd125b0b84a043e3ac67717", "", "e796c39074c7783a38193e3f8d46b355adacca7198d16d879fbfeac6e3"},
	{"cavp key=32 pt=51 ad=90", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "e1934f5db57cc983e6b180e7", "73ed042327f70fe9c572a61545eda8b2a0c6e1d6c291ef19248e973aee6c312012f490c2c6f6166f4a59431e182663fcaea05a", "0a8a18a7150e940c3d87b38e73baee9a5c049ee21795663e264b694a949822b639092d0e67015e86363583fcf0ca645af9f43375f05fdb4ce84f411dcbca73c2220dea03a20115d2e51398344b16bee1ed7c499b353d6c597af8", "fc1ae2b5dcd2c4176c3f538b4c3cc21197f79e608cc3730167936382e4b1e5a7b75ae1678bcebd876705477eb0e0fdbbcda92fb9a0dc58c8d8f84fb590e0422e6077ef"},
	{"cavp key=32 pt=138 ad=90", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "e1934f5db57cc983e6b180e7", "67c6697351ff4aec29cdbaabf2fbe3467cc254f81be8e78d765a2e63339fc99a66320db73158a35a255d051758e95ed4abb2cdc69bb454110e827441213ddc8770e93ea141e1fc673e017e97eadc6b968f385c2aecb03bfb32af3c54ec18db5c021afe43fbfaaa3afb29d1e6053c7c9475d8be6189f95cbba8990f95b1ebf1b3aabbccddee", "0a8a18a7150e940c3d87b38e73baee9a5c049ee21795663e264b694a949822b639092d0e67015e86363583fcf0ca645af9f43375f05fdb4ce84f411dcbca73c2220dea03a20115d2e51398344b16bee1ed7c499b353d6c597af8", "e8318fe5aada811280804f35fb2a89e54bf32b4e55ba7b953547dadb39421d1dc39c7c127c6008b208010177f02fc093c8bbb8b3834d0e060d96dda96ba386c7c01224a4cac1edebffda4f9a64692bfbffb9f7c2999069fab84205224978a10d815d5ab8fa31e4e11630ba01c3b6cb99bef5772357ce86b83b4fb45ea7146402d560b6ad07de635b9366865e788a6bcdb132dcd079"},
}

func unhex(t testing.TB, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// gcmOurs is GCM built from this package's parts, with AAD (which the file
// format does not use) so that every NIST vector applies.
func gcmOurs(key, nonce, plaintext, ad []byte) []byte {
	b, _ := aes.NewCipher(key)
	var h [16]byte
	b.Encrypt(h[:], h[:])
	var g ghash
	g.init(h)
	g.update(ad)
	g.pad()
	var iv [16]byte
	copy(iv[:], nonce)
	binary.BigEndian.PutUint32(iv[12:], 2)
	ct := make([]byte, len(plaintext))
	cipher.NewCTR(b, iv[:]).XORKeyStream(ct, plaintext)
	g.update(ct)
	s := g.finish(uint64(len(ad)), uint64(len(ct)))
	iv[15] = 1
	binary.BigEndian.PutUint32(iv[12:], 1)
	var j0 [16]byte
	b.Encrypt(j0[:], iv[:])
	for i := range s {
		s[i] ^= j0[i]
	}
	return append(ct, s[:]...)
}

func TestNISTVectors(t *testing.T) {
	for _, v := range nistVectors {
		t.Run(v.name, func(t *testing.T) {
			key, nonce, pt, ad, want := unhex(t, v.key), unhex(t, v.nonce), unhex(t, v.plaintext), unhex(t, v.ad), unhex(t, v.res)
			if got := gcmOurs(key, nonce, pt, ad); !bytes.Equal(got, want) {
				t.Fatalf("ours:\n got %x\nwant %x", got, want)
			}
			// The same vector through the standard library: the vector itself is right.
			b, _ := aes.NewCipher(key)
			g, _ := cipher.NewGCM(b)
			if got := g.Seal(nil, nonce, pt, ad); !bytes.Equal(got, want) {
				t.Fatalf("stdlib disagrees with the vector: %x", got)
			}
			if len(ad) > 0 {
				return // the file format has no AAD
			}
			var out bytes.Buffer
			d, err := NewDecrypter(key, &out)
			if err != nil {
				t.Fatal(err)
			}
			d.Write(nonce)
			d.Write(want)
			if err := d.Close(); err != nil || !bytes.Equal(out.Bytes(), pt) {
				t.Fatalf("Decrypter: %v, %x", err, out.Bytes())
			}
		})
	}
}

// mulBitwise is SP 800-38D Algorithm 1, bit by bit: the reference for the
// table-driven multiplication.
func mulBitwise(x, y element) element {
	var z element
	v := y
	for i := 0; i < 128; i++ {
		var bit uint64
		if i < 64 {
			bit = x.hi >> (63 - i) & 1
		} else {
			bit = x.lo >> (127 - i) & 1
		}
		if bit == 1 {
			z.hi ^= v.hi
			z.lo ^= v.lo
		}
		v = mulX(v)
	}
	return z
}

func TestTableMultiplicationMatchesBitwise(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		var h [16]byte
		for j := range h {
			h[j] = byte(rng.Uint32())
		}
		x := element{rng.Uint64(), rng.Uint64()}
		if i%7 == 0 {
			x = element{1 << 63, 0} // the element 1
		}
		var g ghash
		g.init(h)
		g.y = x
		g.mulH()
		if want := mulBitwise(x, load(h[:])); g.y != want {
			t.Fatalf("x=%x H=%x: table %x, bitwise %x", x, h, g.y, want)
		}
	}
}

// sealStd is the standard library's GCM in Cocos's format.
func sealStd(t testing.TB, key, nonce, pt []byte) []byte {
	b, err := Seal(key, nonce, pt)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecrypterCrossCheckStdlib(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(3, 4))
	sizes := []int{0, 1, 15, 16, 17, 31, 32, 33, 1000, 1 << 16, 1<<20 + 5, 3<<20 + 1}
	const wholeFileTrial = 2 // one Write of the whole file: more than one internal chunk
	for _, n := range sizes {
		key, nonce, pt := make([]byte, 32), make([]byte, 12), make([]byte, n)
		rand.Read(key)
		rand.Read(nonce)
		rand.Read(pt)
		file := sealStd(t, key, nonce, pt)
		var streamed bytes.Buffer
		if _, err := SealStream(&streamed, bytes.NewReader(pt), key, nonce); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(streamed.Bytes(), file) {
			t.Fatalf("size %d: SealStream differs from the standard library's GCM", n)
		}
		for trial := 0; trial < 3; trial++ {
			var out bytes.Buffer
			d, _ := NewDecrypter(key, &out)
			for rest := file; len(rest) > 0; {
				k := min(len(rest), 1+rng.IntN(40000))
				switch trial {
				case 0:
					k = min(len(rest), 1+rng.IntN(20)) // tiny writes cross the nonce and tag borders
				case wholeFileTrial:
					k = len(rest)
				}
				if _, err := d.Write(rest[:k]); err != nil {
					t.Fatal(err)
				}
				rest = rest[k:]
			}
			if err := d.Close(); err != nil {
				t.Fatalf("size %d: %v", n, err)
			}
			if !bytes.Equal(out.Bytes(), pt) {
				t.Fatalf("size %d: plaintext differs", n)
			}
		}
	}
}

func TestDecrypterRefuses(t *testing.T) {
	key, nonce := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, 12)
	pt := bytes.Repeat([]byte("cocos"), 1000)
	good := sealStd(t, key, nonce, pt)
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 1; return b }
	wrongKey := bytes.Repeat([]byte{8}, 32)
	cases := []struct {
		name string
		key  []byte
		file []byte
		want error
	}{
		{"wrong key", wrongKey, good, ErrAuth},
		{"flipped nonce", key, flip(0), ErrAuth},
		{"flipped ciphertext", key, flip(100), ErrAuth},
		{"flipped tag", key, flip(len(good) - 1), ErrAuth},
		{"truncated", key, good[:len(good)-1], ErrAuth},
		{"extended", key, append(bytes.Clone(good), 0), ErrAuth},
		{"only a nonce and part of a tag", key, good[:20], ErrShort},
		{"empty", key, nil, ErrShort},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, _ := NewDecrypter(c.key, io.Discard)
			d.Write(c.file)
			if err := d.Close(); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if _, err := NewDecrypter(make([]byte, 16), io.Discard); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}

func FuzzDecrypter(f *testing.F) {
	for _, v := range nistVectors {
		if v.ad == "" {
			f.Add(unhex(f, v.key), append(unhex(f, v.nonce), unhex(f, v.res)...), uint16(7))
		}
	}
	f.Fuzz(func(t *testing.T, key, file []byte, split uint16) {
		if len(key) != 32 {
			return
		}
		b, _ := aes.NewCipher(key)
		g, _ := cipher.NewGCM(b)
		var wantPT []byte
		var wantErr bool
		if len(file) < Overhead {
			wantErr = true
		} else {
			var err error
			wantPT, err = g.Open(nil, file[:NonceSize], file[NonceSize:], nil)
			wantErr = err != nil
		}
		var out bytes.Buffer
		d, _ := NewDecrypter(key, &out)
		s := min(int(split), len(file))
		d.Write(file[:s])
		d.Write(file[s:])
		err := d.Close()
		if (err != nil) != wantErr {
			t.Fatalf("ours: %v, stdlib failed: %v", err, wantErr)
		}
		if err == nil && !bytes.Equal(out.Bytes(), wantPT) {
			t.Fatal("plaintext differs from the standard library's")
		}
	})
}

func BenchmarkDecrypter(b *testing.B) {
	key, nonce := make([]byte, 32), make([]byte, 12)
	pt := make([]byte, 4<<20)
	file := sealStd(b, key, nonce, pt)
	b.SetBytes(int64(len(file)))
	for b.Loop() {
		d, _ := NewDecrypter(key, io.Discard)
		d.Write(file)
		if err := d.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
