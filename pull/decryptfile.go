package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/pull/cipherfile"
)

// DecryptFile decrypts an uploaded resource in Cocos's encrypted format
// (an entry whose source is encrypted with an enabled KBS but has no URL:
// Cocos decrypts such uploads too) with the key r's KBS releases. The
// plaintext is written to a new file beside path; its SHA3-256 is returned
// and nothing else is checked: the caller compares it with the manifest.
// On error no plaintext file is left.
func (f *Fetcher) DecryptFile(ctx context.Context, r Resource, path string) (plain string, sum [32]byte, size int64, err error) {
	fail := func(err error) (string, [32]byte, int64, error) {
		var e *Error
		if errors.As(err, &e) {
			return "", sum, 0, e
		}
		return "", sum, 0, &Error{Resource: r.What, Source: "upload", Class: classOf(err), Err: err}
	}
	key, err := f.key(ctx, r)
	if err != nil {
		return fail(err)
	}
	defer clear(key)
	in, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	defer in.Close()
	out, err := os.CreateTemp(f.cfg.Dir, "upload-*.plain")
	if err != nil {
		if err := os.MkdirAll(f.cfg.Dir, 0o700); err != nil {
			return fail(err)
		}
		if out, err = os.CreateTemp(f.cfg.Dir, "upload-*.plain"); err != nil {
			return fail(err)
		}
	}
	h := digest.New()
	var n counter
	d, err := cipherfile.NewDecrypter(key, io.MultiWriter(out, h, &n))
	if err == nil {
		_, err = io.CopyBuffer(d, in, make([]byte, 1<<20))
	}
	if err == nil {
		if err = d.Close(); err != nil {
			err = classed{ErrDecrypt, err}
		}
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return fail(fmt.Errorf("decrypting the upload: %w", err))
	}
	copy(sum[:], h.Sum(nil))
	return out.Name(), sum, int64(n), nil
}
