package pull_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/cocos/zipdir"
	"github.com/cvmd/cvmd/pull"
	"github.com/cvmd/cvmd/pull/pulltest"
)

func s3Client(s *pulltest.S3, access, secret string) *s3.Client {
	return s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, "")})
}

func putObject(t testing.TB, s *pulltest.S3, key, file string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	c := s3Client(s, s.AccessKey, s.SecretKey)
	ctx := context.Background()
	c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}) // exists after the first call
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key), Body: f, ContentLength: aws.Int64(st.Size())}); err != nil {
		t.Fatalf("putting %s: %v", key, err)
	}
}

func TestFetchS3(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SeaweedFS")
	}
	s := pulltest.StartS3(t)
	host := strings.TrimPrefix(s.Endpoint, "http://")
	_, dial := egressFor(t, []string{host}, nil)
	e := &env{t: t, ca: pulltest.NewCA(t), dial: dial, dir: t.TempDir()}
	src := filepath.Join(e.dir, "iris.csv")
	sum := writeRandom(t, src, 9<<20+5)
	putObject(t, s, "datasets/iris.csv", src)
	store := pull.ObjectStore{Endpoint: s.Endpoint, AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey}
	withStore := func(st pull.ObjectStore) func(*pull.Config) {
		return func(c *pull.Config) { c.Endpoints = pull.Endpoints{S3: st, GCS: st} }
	}
	ds := func(url string) pull.Resource {
		return pull.Resource{What: `dataset "iris.csv"`, Source: manifest.ResourceSource{URL: url}, Hash: sum}
	}
	t.Run("s3", func(t *testing.T) {
		res, err := e.fetcher(withStore(store)).Fetch(context.Background(), ds("s3://cvmd-pull/datasets/iris.csv"))
		if err != nil {
			t.Fatal(err)
		}
		sameFile(t, res.Path, src)
		if res.Name != "iris.csv" || !strings.Contains(res.Origin, s.Endpoint) {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("gcs through the S3-compatible XML API", func(t *testing.T) {
		r := ds("gs://cvmd-pull/datasets/iris.csv")
		r.Source.Type = "gcs"
		res, err := e.fetcher(withStore(store)).Fetch(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		sameFile(t, res.Path, src)
	})
	refusals := []struct {
		name  string
		store pull.ObjectStore
		url   string
		class error
		text  string
	}{
		{"wrong secret", pull.ObjectStore{Endpoint: s.Endpoint, AccessKeyID: s.AccessKey, SecretAccessKey: "wrong-secret-0123456789"}, "s3://cvmd-pull/datasets/iris.csv", pull.ErrForbidden, "SignatureDoesNotMatch"},
		{"anonymous", pull.ObjectStore{Endpoint: s.Endpoint}, "s3://cvmd-pull/datasets/iris.csv", pull.ErrForbidden, "AccessDenied"},
		{"no such key", store, "s3://cvmd-pull/datasets/none.csv", pull.ErrNotFound, "NoSuchKey"},
		{"no such bucket", store, "s3://nobucket/datasets/iris.csv", pull.ErrNotFound, "NoSuchBucket"},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.fetcher(withStore(c.store)).Fetch(context.Background(), ds(c.url))
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("got %v, want %v (%s)", err, c.class, c.text)
			}
		})
	}
	t.Run("resumed with a range and If-Match", func(t *testing.T) {
		big := filepath.Join(e.dir, "big.dat")
		bigSum := writeRandom(t, big, 100<<20)
		putObject(t, s, "big.dat", big)
		r := pull.Resource{What: "dataset 1", Source: manifest.ResourceSource{URL: "s3://cvmd-pull/big.dat"}, Hash: bigSum}
		stop := errors.New("agent killed")
		calls := 0
		_, err := e.fetcher(withStore(store), func(c *pull.Config) {
			c.CheckSpace = func(int64) error {
				if calls++; calls > 1 { // at 64 MiB
					return stop
				}
				return nil
			}
		}).Fetch(context.Background(), r)
		if !errors.Is(err, stop) {
			t.Fatalf("first fetch: %v", err)
		}
		res, err := e.fetcher(withStore(store)).Fetch(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		sameFile(t, res.Path, big)
		if res.ResumedAt < 60<<20 || res.Downloaded > 40<<20 {
			t.Fatalf("resumed at %d, downloaded %d", res.ResumedAt, res.Downloaded)
		}
	})
}

// tarLayer is a gzip layer with the given files (name → mode, content).
func tarLayer(t testing.TB, files map[string]string, modes map[string]int64) v1.Layer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, n := range sortedKeys(files) {
		mode := int64(0o644)
		if m, ok := modes[n]; ok {
			mode = m
		}
		tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(files[n])), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
		tw.Write([]byte(files[n]))
	}
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func sortedKeys(m map[string]string) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	for i := range k {
		for j := i + 1; j < len(k); j++ {
			if k[j] < k[i] {
				k[i], k[j] = k[j], k[i]
			}
		}
	}
	return k
}

func pushImage(t testing.TB, reg *pulltest.Registry, ca *pulltest.CA, ref string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithTransport(ca.Transport())); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return img
}

func TestFetchOCI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts docker-registry")
	}
	ca := pulltest.NewCA(t)
	reg := pulltest.StartRegistry(t, ca)
	_, dial := egressFor(t, []string{reg.Host}, nil)
	e := &env{t: t, ca: ca, dial: dial, dir: t.TempDir()}
	lower := tarLayer(t, map[string]string{"data/iris.csv": "a,b\n1,2\n", "data/notes.md": "not a dataset", "opt/app/main": "\x7fELF binary", "app/algo.py": "print(1)\n", "app/requirements.txt": "numpy\n", "data/old.json": "{}"}, map[string]int64{"opt/app/main": 0o755})
	upper := tarLayer(t, map[string]string{"data/extra.json": `{"k":1}`, "data/iris.csv": "a,b\n3,4\n", "data/.wh.old.json": ""}, nil)
	img := pushImage(t, reg, ca, reg.Host+"/cvmd/iris:1", lower, upper)
	pushImage(t, reg, ca, reg.Host+"/cvmd/one:1", tarLayer(t, map[string]string{"iris.csv": "x,y\n"}, nil))

	// What Cocos hashes for the dataset: the extracted files, zipped.
	want := t.TempDir()
	for n, c := range map[string]string{"data/iris.csv": "a,b\n3,4\n", "data/extra.json": `{"k":1}`, "app/requirements.txt": "numpy\n"} {
		os.MkdirAll(filepath.Join(want, filepath.Dir(n)), 0o755)
		os.WriteFile(filepath.Join(want, n), []byte(c), 0o644)
		os.Chmod(filepath.Join(want, n), 0o644)
	}
	var zb bytes.Buffer
	if _, err := zipdir.WriteDir(&zb, want); err != nil {
		t.Fatal(err)
	}
	var dockerTar bytes.Buffer
	tag, _ := name.NewTag(reg.Host + "/cvmd/iris:1")
	if err := tarball.Write(tag, img, &dockerTar); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		url      string
		role     pull.Role
		algoType string
		hash     [32]byte
		file     string
		reqs     bool
	}{
		{"dataset of several files is their zip", "docker://" + reg.Host + "/cvmd/iris:1", pull.RoleDataset, "", digest.Sum(zb.Bytes()), "iris.zip", false},
		{"dataset of one file", reg.Host + "/cvmd/one:1", pull.RoleDataset, "", digest.Sum([]byte("x,y\n")), "iris.csv", false},
		{"python algorithm and its requirements", "oci://" + reg.Host + "/cvmd/iris:1", pull.RoleAlgorithm, "python", digest.Sum([]byte("print(1)\n")), "algo.py", true},
		{"bin algorithm", reg.Host + "/cvmd/iris:1", pull.RoleAlgorithm, "bin", digest.Sum([]byte("\x7fELF binary")), "main", true},
		{"docker algorithm is the image's docker archive", reg.Host + "/cvmd/iris:1", pull.RoleAlgorithm, "docker", digest.Sum(dockerTar.Bytes()), "image.tar", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := e.fetcher().Fetch(context.Background(), pull.Resource{What: "x", Source: manifest.ResourceSource{URL: c.url}, Hash: c.hash, Role: c.role, AlgoType: c.algoType})
			if err != nil {
				t.Fatal(err)
			}
			if c.file != "image.tar" && c.file != "iris.zip" && res.Name != c.file {
				t.Fatalf("name %q, want %q", res.Name, c.file)
			}
			if (res.Requirements != "") != c.reqs {
				t.Fatalf("requirements %q", res.Requirements)
			}
			if !strings.Contains(res.Origin, "@sha256:") {
				t.Fatalf("origin %q has no digest", res.Origin)
			}
		})
	}
	t.Run("unknown tag", func(t *testing.T) {
		_, err := e.fetcher().Fetch(context.Background(), pull.Resource{What: "algorithm", Source: manifest.ResourceSource{URL: reg.Host + "/cvmd/iris:2"}, Role: pull.RoleAlgorithm})
		if !errors.Is(err, pull.ErrNotFound) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("registry certificate from another CA", func(t *testing.T) {
		other := pulltest.NewCA(t)
		f := e.fetcher(func(c *pull.Config) { c.RootCAs = other.Pool; c.Retry.Attempts = 1 })
		_, err := f.Fetch(context.Background(), pull.Resource{What: "algorithm", Source: manifest.ResourceSource{URL: reg.Host + "/cvmd/iris:1"}, Role: pull.RoleAlgorithm})
		if !errors.Is(err, pull.ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("hash mismatch", func(t *testing.T) {
		_, err := e.fetcher().Fetch(context.Background(), pull.Resource{What: "algorithm", Source: manifest.ResourceSource{URL: reg.Host + "/cvmd/iris:1"}, Role: pull.RoleAlgorithm, AlgoType: "python", Hash: [32]byte{3}})
		if !errors.Is(err, pull.ErrHashMismatch) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("a blob altered in the registry", func(t *testing.T) {
		bad := tarLayer(t, map[string]string{"data/x.csv": "1,2,3\n"}, nil)
		pushImage(t, reg, ca, reg.Host+"/cvmd/bad:1", bad)
		d, _ := bad.Digest()
		blob := filepath.Join(reg.Storage, "docker/registry/v2/blobs/sha256", d.Hex[:2], d.Hex, "data")
		b, err := os.ReadFile(blob)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff // same size, other bytes
		os.WriteFile(blob, b, 0o644)
		_, err = e.fetcher().Fetch(context.Background(), pull.Resource{What: `dataset "x.csv"`, Source: manifest.ResourceSource{URL: reg.Host + "/cvmd/bad:1"}, Hash: digest.Sum([]byte("1,2,3\n"))})
		if !errors.Is(err, pull.ErrHashMismatch) || !strings.Contains(err.Error(), d.Hex[:12]) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("encrypted images refused", func(t *testing.T) {
		_, err := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(make([]byte, 32)) }).Fetch(context.Background(), pull.Resource{What: "algorithm",
			Source: manifest.ResourceSource{URL: reg.Host + "/cvmd/iris:1", Encrypted: true, KBSResourcePath: "a/b/c"}, KBS: &manifest.KBSConfig{URL: "https://k", Enabled: true}})
		if !errors.Is(err, pull.ErrInvalidSource) || !strings.Contains(err.Error(), "ocicrypt") {
			t.Fatalf("got %v", err)
		}
	})
}
