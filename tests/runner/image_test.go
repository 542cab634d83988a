package runner_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

// tarFiles builds a tar of entries: name → content (a trailing "/" makes a
// dir, content "\x00wh" a whiteout is just a file named .wh.<x>).
type entry struct {
	name string
	mode int64
	data []byte
}

func tarOf(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		if e.name[len(e.name)-1] == '/' {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(e.data)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// addImageLayers: layer 1 has /bin/add and /etc/junk; layer 2 deletes
// /etc/junk (a whiteout) and adds /etc/motd.
func addImageLayers(t testing.TB) [][]byte {
	bin, err := os.ReadFile(testBinary(t, "add"))
	if err != nil {
		t.Fatal(err)
	}
	l1 := tarOf(t, []entry{{"bin/", 0o755, nil}, {"bin/add", 0o755, bin}, {"etc/", 0o755, nil}, {"etc/junk", 0o644, []byte("junk")}})
	l2 := tarOf(t, []entry{{"etc/.wh.junk", 0o644, nil}, {"etc/motd", 0o644, []byte("hello")}})
	return [][]byte{l1, l2}
}

func imageConfigJSON(t testing.TB, layers [][]byte) []byte {
	var diffIDs []string
	for _, l := range layers {
		diffIDs = append(diffIDs, "sha256:"+digest(l))
	}
	b, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{
			"Entrypoint": []string{"/bin/add"}, "Cmd": []string{"--a", "1", "--b", "2"},
			"Env": []string{"PATH=/bin", "GREETING=hi"}, "WorkingDir": "/cocos",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dockerSaveTarball is what `docker save` writes: manifest.json, the config,
// <id>/layer.tar per layer.
func dockerSaveTarball(t testing.TB) []byte {
	layers := addImageLayers(t)
	cfg := imageConfigJSON(t, layers)
	cfgName := digest(cfg) + ".json"
	entries := []entry{{cfgName, 0o644, cfg}}
	var names []string
	for _, l := range layers {
		id := digest(l)
		entries = append(entries, entry{id + "/", 0o755, nil}, entry{id + "/layer.tar", 0o644, l})
		names = append(names, id+"/layer.tar")
	}
	man, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{"add:latest"}, "Layers": names}})
	entries = append(entries, entry{"manifest.json", 0o644, man})
	return tarOf(t, entries)
}

// ociLayoutTarball is an OCI image layout (gzip layers) as a tar.
func ociLayoutTarball(t testing.TB) []byte {
	layers := addImageLayers(t)
	cfg := imageConfigJSON(t, layers)
	entries := []entry{{"oci-layout", 0o644, []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {"blobs/", 0o755, nil}, {"blobs/sha256/", 0o755, nil},
		{"blobs/sha256/" + digest(cfg), 0o644, cfg}}
	var descs []map[string]any
	for _, l := range layers {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(l)
		zw.Close()
		entries = append(entries, entry{"blobs/sha256/" + digest(gz.Bytes()), 0o644, gz.Bytes()})
		descs = append(descs, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + digest(gz.Bytes()), "size": gz.Len()})
	}
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + digest(cfg), "size": len(cfg)},
		"layers": descs})
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []map[string]any{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + digest(man), "size": len(man)}}})
	entries = append(entries, entry{"blobs/sha256/" + digest(man), 0o644, man}, entry{"index.json", 0o644, idx})
	return tarOf(t, entries)
}
