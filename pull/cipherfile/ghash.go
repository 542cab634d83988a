package cipherfile

import "encoding/binary"

// element is a GF(2^128) element in GCM's bit order: hi holds bytes 0–7 of
// the block big-endian, and the most significant bit of hi is the
// coefficient of x^0 (NIST SP 800-38D §6.3).
type element struct{ hi, lo uint64 }

func load(b []byte) element {
	return element{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

// r is the reduction polynomial x^128 = 1 + x + x^2 + x^7 in that order.
const r = 0xE1 << 56

// mulX returns e·x: a shift towards the high coefficients, reducing x^128.
func mulX(e element) element {
	carry := e.lo & 1
	e.lo = e.hi<<63 | e.lo>>1
	e.hi >>= 1
	if carry != 0 {
		e.hi ^= r
	}
	return e
}

// reduce8[n] is what the eight low bits n of lo, shifted past x^127 by a
// multiplication by x^8, reduce to: bit i of n is the coefficient of
// x^(127-i), which becomes x^(7-i)·x^128 = x^(7-i)·(1 + x + x^2 + x^7)
// (degree at most 14: no further reduction).
var reduce8 = func() (t [256]uint64) {
	for n := range t {
		for i := 0; i < 8; i++ {
			if n>>i&1 != 0 {
				t[n] ^= r >> (7 - i)
			}
		}
	}
	return t
}()

// ghash is GCM's universal hash with Shoup's 8-bit tables: table[b] is
// P(b)·H, where P(b) has the byte's bits, most significant first, as the
// coefficients of x^0..x^7. Lookups depend on secret data (as in table
// implementations generally); the agent also checks the plaintext's
// SHA3-256 against the manifest, so GCM's tag is not the only guard.
type ghash struct {
	table    [256]element
	y        element
	pending  [16]byte
	nPending int
}

func (g *ghash) init(h [16]byte) {
	// Powers of two first: table[0x80] = H, table[0x40] = H·x, …,
	// table[0x01] = H·x^7; every other entry is the sum of its bits'.
	g.table[0x80] = load(h[:])
	for b := 0x40; b > 0; b >>= 1 {
		g.table[b] = mulX(g.table[b<<1])
	}
	for n := 2; n < 256; n++ {
		if n&(n-1) == 0 {
			continue
		}
		hb := 1 << (bitLen(n) - 1)
		g.table[n] = element{g.table[hb].hi ^ g.table[n^hb].hi, g.table[hb].lo ^ g.table[n^hb].lo}
	}
	g.y = element{}
	g.nPending = 0
}

func bitLen(n int) int {
	l := 0
	for ; n > 0; n >>= 1 {
		l++
	}
	return l
}

// mulH sets y = y·H, Horner's rule over the 16 bytes from the last
// (coefficients x^120..x^127) to the first: z = z·x^8 + P(byte)·H.
func (g *ghash) mulH() {
	var z element
	for _, word := range [2]uint64{g.y.lo, g.y.hi} {
		for j := 0; j < 8; j++ {
			rem := z.lo & 0xff
			z.lo = z.hi<<56 | z.lo>>8
			z.hi = z.hi>>8 ^ reduce8[rem]
			t := &g.table[word&0xff]
			word >>= 8
			z.hi ^= t.hi
			z.lo ^= t.lo
		}
	}
	g.y = z
}

func (g *ghash) block(b []byte) {
	g.y.hi ^= binary.BigEndian.Uint64(b)
	g.y.lo ^= binary.BigEndian.Uint64(b[8:])
	g.mulH()
}

// update hashes p, keeping a partial block for the next call.
func (g *ghash) update(p []byte) {
	if g.nPending > 0 {
		k := copy(g.pending[g.nPending:], p)
		g.nPending += k
		p = p[k:]
		if g.nPending < 16 {
			return
		}
		g.block(g.pending[:])
		g.nPending = 0
	}
	for len(p) >= 16 {
		g.block(p[:16])
		p = p[16:]
	}
	g.nPending = copy(g.pending[:], p)
}

// pad ends a part (AAD or ciphertext) with zeros to a block boundary.
func (g *ghash) pad() {
	if g.nPending > 0 {
		clear(g.pending[g.nPending:])
		g.block(g.pending[:])
		g.nPending = 0
	}
}

// finish pads and hashes the lengths block (bits of AAD, bits of
// ciphertext) and returns GHASH's output.
func (g *ghash) finish(aadLen, ctLen uint64) [16]byte {
	g.pad()
	var l [16]byte
	binary.BigEndian.PutUint64(l[:], aadLen*8)
	binary.BigEndian.PutUint64(l[8:], ctLen*8)
	g.block(l[:])
	var out [16]byte
	binary.BigEndian.PutUint64(out[:], g.y.hi)
	binary.BigEndian.PutUint64(out[8:], g.y.lo)
	return out
}
