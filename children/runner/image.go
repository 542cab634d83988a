package runner

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// An image is a `docker` algorithm unpacked: the rootfs and how to start it.
type image struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
}

// imageConfig is the part of a Docker/OCI image config JSON we honour.
// The image's User is ignored on purpose: algorithms never run as root
// and always as the sandbox's own uid.
type imageConfig struct {
	Config struct {
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
		WorkingDir string   `json:"WorkingDir"`
	} `json:"config"`
}

// Limits on what an image archive may contain, so that a hostile archive
// cannot make the runner use unbounded memory (it still uses disk, which is
// bounded by the work dir's filesystem).
const (
	maxImageJSON   = 4 << 20 // manifest, index, config
	maxImageLayers = 256
)

// unpackImage reads a `docker save` tarball or an OCI image layout (as a tar)
// from archive and unpacks its layers, in order, into rootfs (which must be
// empty). blobDir is scratch space for the archive's own files.
func unpackImage(archive, blobDir, rootfs string) (*image, error) {
	if err := extractArchive(archive, blobDir); err != nil {
		return nil, fmt.Errorf("reading image archive: %w", err)
	}
	blobs, err := os.OpenRoot(blobDir)
	if err != nil {
		return nil, err
	}
	defer blobs.Close()
	configPath, layers, err := imageManifest(blobs)
	if err != nil {
		return nil, err
	}
	raw, err := readSmall(blobs, configPath)
	if err != nil {
		return nil, fmt.Errorf("image config %s: %w", configPath, err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("image config %s: %w", configPath, err)
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	for _, l := range layers {
		if err := applyLayer(blobs, l, root); err != nil {
			return nil, fmt.Errorf("image layer %s: %w", l, err)
		}
	}
	return &image{Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd, Env: cfg.Config.Env, WorkingDir: cfg.Config.WorkingDir}, nil
}

// imageManifest finds the config and the layers: from manifest.json (docker
// save) if there is one, else from the OCI index.json.
func imageManifest(blobs *os.Root) (config string, layers []string, err error) {
	if raw, err := readSmall(blobs, "manifest.json"); err == nil {
		var m []struct {
			Config string   `json:"Config"`
			Layers []string `json:"Layers"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return "", nil, fmt.Errorf("docker manifest.json: %w", err)
		}
		if len(m) != 1 {
			return "", nil, fmt.Errorf("docker manifest.json: %d images, want exactly 1", len(m))
		}
		return m[0].Config, m[0].Layers, checkLayers(m[0].Layers)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", nil, fmt.Errorf("docker manifest.json: %w", err)
	}
	raw, err := readSmall(blobs, "index.json")
	if err != nil {
		return "", nil, fmt.Errorf("neither a docker save tarball (manifest.json) nor an OCI layout (index.json): %w", err)
	}
	type descriptor struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
	}
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return "", nil, fmt.Errorf("OCI index.json: %w", err)
	}
	// Follow nested indexes (an image index inside the layout's index) a few levels.
	for depth := 0; depth < 4; depth++ {
		if len(idx.Manifests) != 1 {
			return "", nil, fmt.Errorf("OCI index: %d manifests, want exactly 1", len(idx.Manifests))
		}
		p, err := blobPath(idx.Manifests[0].Digest)
		if err != nil {
			return "", nil, err
		}
		raw, err := readSmall(blobs, p)
		if err != nil {
			return "", nil, fmt.Errorf("OCI manifest %s: %w", p, err)
		}
		var m struct {
			MediaType string       `json:"mediaType"`
			Manifests []descriptor `json:"manifests"`
			Config    descriptor   `json:"config"`
			Layers    []descriptor `json:"layers"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return "", nil, fmt.Errorf("OCI manifest %s: %w", p, err)
		}
		if len(m.Manifests) > 0 {
			idx.Manifests = m.Manifests
			continue
		}
		if config, err = blobPath(m.Config.Digest); err != nil {
			return "", nil, err
		}
		for _, l := range m.Layers {
			if strings.Contains(l.MediaType, "zstd") {
				return "", nil, fmt.Errorf("OCI layer %s: zstd layers are not supported", l.Digest)
			}
			lp, err := blobPath(l.Digest)
			if err != nil {
				return "", nil, err
			}
			layers = append(layers, lp)
		}
		return config, layers, checkLayers(layers)
	}
	return "", nil, errors.New("OCI index: nested too deeply")
}

func checkLayers(layers []string) error {
	if len(layers) > maxImageLayers {
		return fmt.Errorf("image has %d layers, at most %d allowed", len(layers), maxImageLayers)
	}
	return nil
}

// blobPath turns "sha256:<hex>" into "blobs/sha256/<hex>", refusing anything else.
func blobPath(digest string) (string, error) {
	alg, hex, ok := strings.Cut(digest, ":")
	if !ok || alg != "sha256" || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("OCI digest %q: want sha256:<64 hex>", digest)
	}
	return "blobs/sha256/" + hex, nil
}

func readSmall(r *os.Root, name string) ([]byte, error) {
	f, err := r.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxImageJSON+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxImageJSON {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxImageJSON)
	}
	return b, nil
}

// extractArchive unpacks the outer archive (regular files and dirs only) into dir.
func extractArchive(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := cleanEntry(h.Name)
		if !ok {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return err
			}
			if err := writeEntry(root, name, 0o644, tr); err != nil {
				return err
			}
		}
	}
}

// cleanEntry makes a tar entry name relative and clean; ok is false for the root itself.
func cleanEntry(name string) (string, bool) {
	name = path.Clean("/" + name)[1:]
	return name, name != ""
}

func writeEntry(root *os.Root, name string, mode fs.FileMode, r io.Reader) error {
	root.Remove(name) // a later layer may replace a symlink or file: never write through it
	w, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	// OpenFile's mode is filtered by the umask; set it exactly (setuid/setgid/sticky dropped).
	return root.Chmod(name, mode&fs.ModePerm)
}

// applyLayer applies one layer tarball (plain or gzip) from blobs onto root,
// honouring OCI whiteouts. Device nodes, fifos and ownership are skipped:
// the runner is unprivileged, and the algorithm runs as one non-root uid.
func applyLayer(blobs *os.Root, layer string, root *os.Root) error {
	f, err := blobs.Open(layer)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := cleanEntry(h.Name)
		if !ok {
			continue
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		if base == ".wh..wh..opq" {
			if err := clearDir(root, dir); err != nil {
				return err
			}
			continue
		}
		if strings.HasPrefix(base, ".wh.") {
			if err := root.RemoveAll(path.Join(dir, strings.TrimPrefix(base, ".wh."))); err != nil {
				return err
			}
			continue
		}
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// The algorithm runs as one non-root uid, not as the image's owners:
		// everything is made readable (and searchable/executable where the
		// image meant it to be) by everyone. The image is the algorithm's
		// own, so this reveals nothing to anyone else.
		mode := fs.FileMode(h.Mode)&fs.ModePerm | 0o444
		if mode&0o111 != 0 {
			mode |= 0o111
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
				root.Remove(name)
			}
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := root.Chmod(name, mode|0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := writeEntry(root, name, mode, tr); err != nil {
				return err
			}
		case tar.TypeSymlink:
			root.RemoveAll(name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
		case tar.TypeLink:
			target, ok := cleanEntry(h.Linkname)
			if !ok {
				return fmt.Errorf("hard link %s to the root", name)
			}
			root.RemoveAll(name)
			if err := root.Link(target, name); err != nil {
				return err
			}
		default:
			// char/block devices, fifos: never created.
		}
	}
}

func clearDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := root.RemoveAll(path.Join(dir, n)); err != nil {
			return err
		}
	}
	return nil
}
