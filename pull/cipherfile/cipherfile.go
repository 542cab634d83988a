// Package cipherfile decrypts Cocos's encrypted resources as a stream:
// nonce (12 bytes) ‖ AES-256-GCM ciphertext ‖ tag (16 bytes) over the whole
// file, no AAD (reference/cocos-pull-and-platforms.md §1.5).
//
// The standard library's AEAD needs the whole ciphertext in memory; this
// package does not. It composes GCM from the standard library's AES block
// cipher and CTR mode (the keystream, with GCM's counter layout) and its own
// GHASH (ghash.go, Shoup's 8-bit tables), which is tested against NIST's GCM vectors and
// cross-checked against crypto/cipher's GCM on random inputs. Plaintext is
// written out before the tag has been checked: the caller writes it to a
// staging file and uses nothing until Close returns nil.
//
// It does not encrypt for production (Seal exists for tests and tools), does
// not handle AAD in the file format, and keeps no key material after Close.
// It imports only the standard library; the pull package uses it.
package cipherfile

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sizes of the format's parts.
const (
	KeySize   = 32
	NonceSize = 12
	TagSize   = 16
	// Overhead is what the format adds to the plaintext.
	Overhead = NonceSize + TagSize
	// MaxPlaintext is GCM's limit: 2^32-2 blocks (the 32-bit counter must
	// not wrap; the standard library's CTR would carry into the nonce).
	MaxPlaintext = (1<<32 - 2) * 16
)

// Errors of Decrypter.
var (
	// ErrAuth: the tag does not match; the key is wrong or the file was
	// altered. Whatever was written out must be discarded.
	ErrAuth = errors.New("cipherfile: decryption failed (authentication error)")
	// ErrShort: fewer bytes than a nonce and a tag.
	ErrShort = errors.New("cipherfile: ciphertext shorter than nonce and tag")
	// ErrTooLarge: beyond GCM's limit.
	ErrTooLarge = errors.New("cipherfile: ciphertext larger than GCM allows")
)

// Decrypter is an io.WriteCloser: write the file's bytes in order, the
// plaintext goes to out as it is decrypted, and Close checks the tag.
type Decrypter struct {
	out   io.Writer
	block cipher.Block
	gh    ghash

	nonce   [NonceSize]byte
	nNonce  int
	ctr     cipher.Stream
	hold    [TagSize]byte // the last TagSize bytes seen: maybe the tag
	nHold   int
	ctLen   uint64
	scratch []byte
	closed  bool
}

// NewDecrypter returns a Decrypter with a 32-byte key writing plaintext to out.
func NewDecrypter(key []byte, out io.Writer) (*Decrypter, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("cipherfile: key has %d bytes, want %d", len(key), KeySize)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	var h [16]byte
	b.Encrypt(h[:], h[:])
	d := &Decrypter{out: out, block: b}
	d.gh.init(h)
	return d, nil
}

// Write consumes the next bytes of the file.
func (d *Decrypter) Write(p []byte) (int, error) {
	if d.closed {
		return 0, errors.New("cipherfile: write after close")
	}
	n := len(p)
	if d.nNonce < NonceSize {
		k := copy(d.nonce[d.nNonce:], p)
		d.nNonce += k
		p = p[k:]
		if d.nNonce == NonceSize {
			// GCM with a 96-bit IV: J0 = IV ‖ 1; the text starts at J0+1.
			var iv [16]byte
			copy(iv[:], d.nonce[:])
			binary.BigEndian.PutUint32(iv[12:], 2)
			d.ctr = cipher.NewCTR(d.block, iv[:])
		}
	}
	if len(p) == 0 {
		return n, nil
	}
	// Everything but the last TagSize bytes seen is ciphertext.
	total := d.nHold + len(p)
	if total <= TagSize {
		copy(d.hold[d.nHold:], p)
		d.nHold = total
		return n, nil
	}
	release := total - TagSize // bytes now known to be ciphertext
	fromHold := min(release, d.nHold)
	if fromHold > 0 {
		if err := d.decrypt(d.hold[:fromHold]); err != nil {
			return 0, err
		}
		copy(d.hold[:], d.hold[fromHold:d.nHold])
		d.nHold -= fromHold
	}
	fromP := release - fromHold
	if err := d.decrypt(p[:fromP]); err != nil {
		return 0, err
	}
	d.nHold += copy(d.hold[d.nHold:], p[fromP:])
	return n, nil
}

func (d *Decrypter) decrypt(ct []byte) error {
	for len(ct) > 0 {
		chunk := ct[:min(len(ct), 1<<20)]
		ct = ct[len(chunk):]
		d.ctLen += uint64(len(chunk))
		if d.ctLen > MaxPlaintext {
			return ErrTooLarge
		}
		d.gh.update(chunk)
		if cap(d.scratch) < len(chunk) {
			d.scratch = make([]byte, len(chunk))
		}
		buf := d.scratch[:len(chunk)]
		d.ctr.XORKeyStream(buf, chunk)
		if _, err := d.out.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// Close checks the tag: nil means every byte written out is authentic.
func (d *Decrypter) Close() error {
	if d.closed {
		return errors.New("cipherfile: closed twice")
	}
	d.closed = true
	if d.nNonce < NonceSize || d.nHold < TagSize {
		return ErrShort
	}
	tag := d.tag(0)
	if subtle.ConstantTimeCompare(tag[:], d.hold[:]) != 1 {
		return ErrAuth
	}
	return nil
}

// tag finishes GHASH over (aadLen bytes of AAD, the ciphertext) and masks it
// with E_K(J0).
func (d *Decrypter) tag(aadLen uint64) [16]byte {
	s := d.gh.finish(aadLen, d.ctLen)
	var j0 [16]byte
	copy(j0[:], d.nonce[:])
	j0[15] = 1
	d.block.Encrypt(j0[:], j0[:])
	subtle.XORBytes(s[:], s[:], j0[:])
	return s
}

// Seal encrypts plaintext in Cocos's format with the standard library's
// GCM (in memory: for tests and small tools, never on the fetch path).
func Seal(key, nonce, plaintext []byte) ([]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("cipherfile: nonce has %d bytes, want %d", len(nonce), NonceSize)
	}
	return g.Seal(append([]byte(nil), nonce...), nonce, plaintext, nil), nil
}

// SealStream writes Cocos's format of everything r yields to w with the
// streaming construction (the counterpart of Decrypter, for large test
// resources and benchmarks): CTR, then GHASH of the ciphertext.
func SealStream(w io.Writer, r io.Reader, key, nonce []byte) (int64, error) {
	if len(key) != KeySize || len(nonce) != NonceSize {
		return 0, fmt.Errorf("cipherfile: key %d bytes, nonce %d bytes: want %d and %d", len(key), len(nonce), KeySize, NonceSize)
	}
	d, err := NewDecrypter(key, io.Discard)
	if err != nil {
		return 0, err
	}
	copy(d.nonce[:], nonce)
	d.nNonce = NonceSize
	var iv [16]byte
	copy(iv[:], nonce)
	binary.BigEndian.PutUint32(iv[12:], 2)
	ctr := cipher.NewCTR(d.block, iv[:])
	if _, err := w.Write(nonce); err != nil {
		return 0, err
	}
	n := int64(NonceSize)
	buf, ct := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			d.ctLen += uint64(k)
			if d.ctLen > MaxPlaintext {
				return n, ErrTooLarge
			}
			ctr.XORKeyStream(ct[:k], buf[:k])
			d.gh.update(ct[:k])
			if _, err := w.Write(ct[:k]); err != nil {
				return n, err
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, rerr
		}
	}
	tag := d.tag(0)
	_, err = w.Write(tag[:])
	return n + TagSize, err
}
