package pull

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/zipdir"
)

// fetchOCI pulls an image (TLS verified, every blob's digest checked as it
// is read) into an OCI layout in the staging dir, one verified blob at a
// time (so a restart keeps the blobs already complete), then turns it into
// what Cocos makes of an image: a docker algorithm's docker-archive
// tarball, another algorithm's file, or a dataset's files.
func (f *Fetcher) fetchOCI(ctx context.Context, r Resource, loc *Location) (_ *Result, err error) {
	dir := f.staging(r) + ".oci"
	img, origin, got, err := f.pullImage(ctx, loc, dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(f.staging(r) + ".out")
		}
	}()
	out := f.staging(r) + ".out"
	os.RemoveAll(out)
	res := &Result{Downloaded: got, Attempts: 1, Origin: origin}
	// The SHA3-256 is computed as the result is written, where it can be.
	var sum [32]byte
	var size int64
	hashed := false
	switch {
	case r.Role == RoleAlgorithm && r.AlgoType == "docker":
		if sum, size, err = f.writeDockerArchive(img, loc, out); err != nil {
			os.Remove(out)
			return nil, err
		}
		res.Path, res.Name, hashed = out, "image.tar", true
	default:
		files, sums, err := f.extract(img, r, out)
		if err != nil {
			os.RemoveAll(out)
			return nil, err
		}
		if err := f.pickOCIResult(r, loc, out, files, res); err != nil {
			os.RemoveAll(out)
			return nil, err
		}
		if rel, err := filepath.Rel(out, res.Path); err == nil {
			if hs, ok := sums[filepath.ToSlash(rel)]; ok {
				sum, size, hashed = hs.sum, hs.size, true
			}
		}
	}
	if !hashed {
		if sum, size, err = digestFile(res.Path); err != nil {
			return nil, err
		}
	}
	if sum != r.Hash {
		os.RemoveAll(out)
		f.Discard(r)
		return nil, classErr(ErrHashMismatch, "expected %x, got %x (of %s)", r.Hash, sum, res.Name)
	}
	res.Size = size
	os.RemoveAll(dir) // the image is no longer needed
	return res, nil
}

func digestFile(p string) ([32]byte, int64, error) {
	fh, err := os.Open(p)
	if err != nil {
		return [32]byte{}, 0, err
	}
	defer fh.Close()
	return digest.Reader(fh)
}

// pullImage copies the image's manifest, config and layers into dir as an
// OCI layout, skipping blobs already there (a resumed pull), and returns
// the image read back from disk.
func (f *Fetcher) pullImage(ctx context.Context, loc *Location, dir string) (v1.Image, string, int64, error) {
	// go-containerregistry falls back to plain HTTP for loopback and
	// private registries after a TLS failure; a registry is TLS or nothing.
	tr := httpsOnly{f.httpClient().Transport}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})}
	var img v1.Image
	var err error
	for attempt := 0; ; attempt++ {
		img, err = remote.Image(loc.Image, opts...)
		if err == nil {
			break
		}
		err = ociErr(err)
		if !isTransient(err) || attempt+1 >= f.retry.Attempts {
			return nil, "", 0, err
		}
		if werr := f.wait(ctx, attempt); werr != nil {
			return nil, "", 0, werr
		}
	}
	d, err := img.Digest()
	if err != nil {
		return nil, "", 0, ociErr(err)
	}
	origin := fmt.Sprintf("%s@%s", loc.Image.Context().Name(), d)
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o700); err != nil {
		return nil, "", 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, "", 0, ociErr(err)
	}
	mt, _ := img.MediaType()
	cfg, err := img.RawConfigFile()
	if err != nil {
		return nil, "", 0, ociErr(err)
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return nil, "", 0, ociErr(err)
	}
	if h, _, _ := v1.SHA256(strings.NewReader(string(cfg))); h != cfgName {
		return nil, "", 0, classErr(ErrHashMismatch, "image config digest %s, got %s", cfgName, h)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, "", 0, ociErr(err)
	}
	var got int64
	for i, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return nil, "", 0, ociErr(err)
		}
		dst := filepath.Join(dir, "blobs", ld.Algorithm, ld.Hex)
		if _, err := os.Stat(dst); err == nil {
			continue // verified and complete from an earlier attempt
		}
		for attempt := 0; ; attempt++ {
			n, err := f.copyLayer(l, dst)
			got += n
			if err == nil {
				break
			}
			if !isTransient(err) || attempt+1 >= f.retry.Attempts {
				return nil, "", 0, fmt.Errorf("layer %d (%s): %w", i, ld, err)
			}
			if werr := f.wait(ctx, attempt); werr != nil {
				return nil, "", 0, werr
			}
		}
	}
	write := func(h v1.Hash, b []byte) error {
		return os.WriteFile(filepath.Join(dir, "blobs", h.Algorithm, h.Hex), b, 0o600)
	}
	if err := write(cfgName, cfg); err != nil {
		return nil, "", 0, err
	}
	if err := write(d, raw); err != nil {
		return nil, "", 0, err
	}
	idx := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":%q,"digest":%q,"size":%d}]}`, mt, d, len(raw))
	if err := os.WriteFile(filepath.Join(dir, "index.json"), []byte(idx), 0o600); err != nil {
		return nil, "", 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o600); err != nil {
		return nil, "", 0, err
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, "", 0, err
	}
	local, err := p.Image(d)
	if err != nil {
		return nil, "", 0, err
	}
	return local, origin, got, nil
}

type httpsOnly struct{ rt http.RoundTripper }

func (h httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("plain-HTTP registry request %s refused (TLS only)", r.URL.Redacted())
	}
	return h.rt.RoundTrip(r)
}

func (f *Fetcher) wait(ctx context.Context, attempt int) error {
	t := f.retry.delay(attempt)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timeAfter(t):
		return nil
	}
}

// copyLayer writes one compressed layer to dst through a temporary file;
// go-containerregistry checks the digest as the last byte is read, so a
// blob is renamed into place only once verified.
func (f *Fetcher) copyLayer(l v1.Layer, dst string) (int64, error) {
	rc, err := l.Compressed()
	if err != nil {
		return 0, ociErr(err)
	}
	defer rc.Close()
	tmp := dst + ".tmp"
	fh, err := os.Create(tmp)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(fh, rc, make([]byte, 1<<20))
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = rc.Close() // the digest check happens at EOF/close
	}
	if err != nil {
		os.Remove(tmp)
		// go-containerregistry's verifying reader (an internal type, so
		// matched by its words): the registry sent other bytes.
		if m := err.Error(); strings.Contains(m, "error verifying") && (strings.Contains(m, "checksum") || strings.Contains(m, "size")) {
			return n, classErr(ErrHashMismatch, "layer %s: %v", filepath.Base(dst), err)
		}
		return n, ociErr(err)
	}
	return n, os.Rename(tmp, dst)
}

// ociErr classes a registry error.
func ociErr(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusNotFound:
			return classErr(ErrNotFound, "%v", err)
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return classErr(ErrForbidden, "%v", err)
		case te.Temporary() || te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests:
			return transient{err}
		}
		for _, d := range te.Errors {
			if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode || d.Code == transport.BlobUnknownErrorCode {
				return classErr(ErrNotFound, "%v", err)
			}
		}
		return err
	}
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		return classed{ErrUnreachable, err}
	}
	return netErr(err)
}

func (f *Fetcher) writeDockerArchive(img v1.Image, loc *Location, out string) ([32]byte, int64, error) {
	var sum [32]byte
	tag, ok := loc.Image.(name.Tag)
	if !ok {
		tag = loc.Image.Context().Tag("pulled")
	}
	fh, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return sum, 0, err
	}
	h := digest.New()
	var n counter
	if err := tarball.Write(tag, img, io.MultiWriter(fh, h, &n)); err != nil {
		fh.Close()
		return sum, 0, fmt.Errorf("writing the docker archive: %w", err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, int64(n), fh.Close()
}

// fileSum is an extracted file's SHA3-256, computed as it was written.
type fileSum struct {
	sum  [32]byte
	size int64
}

// Cocos's rules for what an image holds (reference §1.4).
var (
	datasetSuffixes = []string{".csv", ".json", ".txt", ".parquet", ".arrow", ".dat", ".zip", ".tar", ".gz", ".tgz", ".tar.gz"}
	notBinSuffixes  = []string{".py", ".wasm", ".wat", ".js", ".sh", ".csv", ".json", ".txt", ".md"}
)

func hasSuffix(p string, suffixes []string) bool {
	return slices.ContainsFunc(suffixes, func(s string) bool { return strings.HasSuffix(p, s) })
}

// algorithmFile reports whether an image file is the algorithm of type t.
func algorithmFile(t, p string, mode int64) bool {
	switch t {
	case "python":
		return strings.HasSuffix(p, ".py")
	case "wasm":
		return strings.HasSuffix(p, ".wasm") || strings.HasSuffix(p, ".wat")
	case "bin", "":
		base := path.Base(p)
		if hasSuffix(base, notBinSuffixes) {
			return false
		}
		for _, w := range []string{"algorithm", "main", "run", "execute"} {
			if strings.Contains(base, w) {
				return true
			}
		}
		return mode&0o111 != 0
	}
	return false
}

// extract walks the layers from the top one down (an upper layer's file
// hides a lower one's; whiteouts hide too) and writes the files the
// resource wants under out, returning their relative paths in order found.
func (f *Fetcher) extract(img v1.Image, r Resource, out string) ([]string, map[string]fileSum, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return nil, nil, err
	}
	root, err := os.OpenRoot(out)
	if err != nil {
		return nil, nil, err
	}
	sums := map[string]fileSum{}
	defer root.Close()
	seen := map[string]bool{}
	hidden := map[string]bool{}
	var files []string
	var total int64
	wantAlgo := r.Role == RoleAlgorithm
	haveAlgo, haveReqs := false, false
	for i := len(layers) - 1; i >= 0; i-- {
		rc, err := layers[i].Uncompressed()
		if err != nil {
			return nil, nil, ociErr(err)
		}
		var whiteouts []string
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				rc.Close()
				return nil, nil, fmt.Errorf("reading layer %d: %w", i, err)
			}
			p := path.Clean(strings.TrimPrefix(h.Name, "./"))
			if p == "." || strings.HasPrefix(p, "../") || p == ".." || path.IsAbs(p) {
				continue
			}
			if b := path.Base(p); strings.HasPrefix(b, ".wh.") {
				whiteouts = append(whiteouts, path.Join(path.Dir(p), strings.TrimPrefix(b, ".wh.")))
				continue
			}
			if h.Typeflag != tar.TypeReg || seen[p] || isHidden(hidden, p) {
				continue
			}
			seen[p] = true
			keep := false
			switch {
			case wantAlgo && !haveAlgo && algorithmFile(r.AlgoType, p, h.Mode):
				keep, haveAlgo = true, true
			case wantAlgo && !haveReqs && path.Base(p) == "requirements.txt":
				keep, haveReqs = true, true
			case !wantAlgo && hasSuffix(p, datasetSuffixes):
				keep = true
			}
			if !keep {
				continue
			}
			total += h.Size
			if f.cfg.MaxBytes > 0 && total > f.cfg.MaxBytes {
				rc.Close()
				return nil, nil, classErr(ErrTooLarge, "the image's files exceed %d bytes", f.cfg.MaxBytes)
			}
			fs, err := writeRooted(root, p, tr, h.Mode)
			if err != nil {
				rc.Close()
				return nil, nil, fmt.Errorf("extracting %s: %w", p, err)
			}
			sums[p] = fs
			files = append(files, p)
		}
		if err := rc.Close(); err != nil {
			return nil, nil, ociErr(err)
		}
		for _, w := range whiteouts {
			hidden[w] = true
		}
	}
	return files, sums, nil
}

func isHidden(hidden map[string]bool, p string) bool {
	for q := p; q != "." && q != "/"; q = path.Dir(q) {
		if hidden[q] {
			return true
		}
	}
	return false
}

func writeRooted(root *os.Root, p string, r io.Reader, mode int64) (fileSum, error) {
	var fs fileSum
	if d := path.Dir(p); d != "." {
		if err := root.MkdirAll(d, 0o700); err != nil {
			return fs, err
		}
	}
	fh, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fs, err
	}
	// The header's mode exactly, whatever the umask: the zip of several
	// files records it, so it is part of the hash.
	if err := fh.Chmod(os.FileMode(mode&0o777 | 0o400)); err != nil {
		fh.Close()
		return fs, err
	}
	h := digest.New()
	n, err := io.CopyBuffer(io.MultiWriter(fh, h), r, make([]byte, 1<<20))
	if err != nil {
		fh.Close()
		return fs, err
	}
	copy(fs.sum[:], h.Sum(nil))
	fs.size = n
	return fs, fh.Close()
}

// pickOCIResult decides what of the extracted files is the resource: the
// algorithm file; a dataset's single file; several dataset files as their
// deterministic zip (what Cocos hashes and writes).
func (f *Fetcher) pickOCIResult(r Resource, loc *Location, out string, files []string, res *Result) error {
	if r.Role == RoleAlgorithm {
		var algo string
		for _, p := range files {
			if path.Base(p) == "requirements.txt" && !algorithmFile(r.AlgoType, p, 0) {
				res.Requirements = filepath.Join(out, p)
			} else if algo == "" {
				algo = p
			}
		}
		if algo == "" {
			return classErr(ErrNotFound, "no algorithm file of type %q found in the image", r.AlgoType)
		}
		res.Path, res.Name = filepath.Join(out, algo), path.Base(algo)
		return nil
	}
	switch len(files) {
	case 0:
		return classErr(ErrNotFound, "no dataset file (%s) in the image", strings.Join(datasetSuffixes, " "))
	case 1:
		res.Path, res.Name = filepath.Join(out, files[0]), path.Base(files[0])
		return nil
	}
	zipPath := out + ".zip"
	if err := zipdir.WriteDirFile(zipPath, out); err != nil {
		return err
	}
	os.RemoveAll(out)
	if err := os.Rename(zipPath, out); err != nil {
		return err
	}
	res.Path, res.Name = out, loc.Name()+".zip"
	return nil
}
