package devmanager

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/proto/cvms"
)

func TestSpecRemoteSources(t *testing.T) {
	dir := t.TempDir()
	_, pub, err := rolesig.NewKey("ecdsa")
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "public.pem")
	os.WriteFile(key, pub, 0o644)
	data := filepath.Join(dir, "iris.csv")
	os.WriteFile(data, []byte("a,b\n"), 0o644)
	hash := strings.Repeat("ab", 32)
	d1, err := ParseRemoteDataset("url=s3://b/k/iris.csv,file=" + data + ",type=s3")
	if err != nil {
		t.Fatal(err)
	}
	d2, err := ParseRemoteDataset("url=https://h/x.enc,hash=" + hash + ",encrypted,kbs-path=default/key/x,filename=x.csv,decompress")
	if err != nil {
		t.Fatal(err)
	}
	req, err := Spec{ID: "r", AlgoType: "bin", PublicKey: key, AlgoHash: hash, KBSURL: "https://kbs:8080",
		AlgoSource:     &cvms.Source{Url: "docker://reg/algo:1"},
		Datasets:       []string{data},
		NoFilenames:    true,
		RemoteDatasets: []RemoteDataset{d1, d2}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	a := req.GetAlgorithm()
	if a.GetSource().GetUrl() != "docker://reg/algo:1" || a.GetKbs() != nil || len(a.GetHash()) != 32 {
		t.Fatalf("algorithm %v", a)
	}
	ds := req.GetDatasets()
	if len(ds) != 3 || ds[0].GetFilename() != "" || ds[1].GetSource().GetType() != "s3" || ds[1].GetKbs() != nil {
		t.Fatalf("datasets %v", ds)
	}
	if !ds[2].GetSource().GetEncrypted() || ds[2].GetKbs().GetUrl() != "https://kbs:8080" || !ds[2].GetKbs().GetEnabled() || ds[2].GetFilename() != "x.csv" || !ds[2].GetDecompress() {
		t.Fatalf("encrypted dataset %v", ds[2])
	}
	for _, bad := range []string{"file=" + data, "url=x", "url=x,hash=12", "url=x,hash=" + hash + ",file=" + data, "url=x,hash=" + hash + ",colour=red"} {
		d, err := ParseRemoteDataset(bad)
		if err == nil {
			_, err = Spec{AlgoType: "bin", PublicKey: key, AlgoHash: hash, AlgoSource: &cvms.Source{Url: "https://h/a"}, RemoteDatasets: []RemoteDataset{d}}.Build()
		}
		if err == nil {
			t.Errorf("--remote-dataset %q accepted", bad)
		}
	}
}
