package pull

import (
	"strings"
	"testing"

	"github.com/cvmd/cvmd/cocos/manifest"
)

var sourceSeeds = []struct{ typ, url string }{
	{"", "https://example.com/data/iris.csv"},
	{"https", "https://example.com:8443/x?y=1"},
	{"s3", "s3://bucket/key/with/slashes.csv"},
	{"gcs", "gs://bucket/k"},
	{"oci-image", "docker://registry.example/ns/img:1"},
	{"", "registry.example/ns/img@sha256:" + strings.Repeat("a", 64)},
	{"", "img:tag"},
	{"s3", "https://example.com/x"},
	{"", "ftp://x/y"},
	{"", "s3://bucket"},
	{"", "http://user:pw@host/x"},
}

// FuzzParseSource: any type and URL either parse into a location whose
// name is a plain file name and whose first host is host:port, or are
// refused as an invalid source.
func FuzzParseSource(f *testing.F) {
	for _, s := range sourceSeeds {
		f.Add(s.typ, s.url)
	}
	f.Fuzz(func(t *testing.T, typ, url string) {
		loc, err := Parse(typ, url)
		if err != nil {
			if classOf(err) != ErrInvalidSource {
				t.Fatalf("refusal %v is not classed invalid_source", err)
			}
			return
		}
		if n := loc.Name(); strings.ContainsAny(n, "/\x00") || n == "." || n == ".." {
			t.Fatalf("name %q from %q", n, url)
		}
		if hp, err := loc.HostPort(Endpoints{}); err == nil && !strings.Contains(hp, ":") {
			t.Fatalf("host:port %q", hp)
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/10", "bytes 5-9/*", "bytes 9-/10", "bytes -1-2/3", "items 0-1/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, total, ok := parseContentRange(s)
		if ok && (start < 0 || total < -1) {
			t.Fatalf("%q: start %d total %d", s, start, total)
		}
	})
}

func TestParseSource(t *testing.T) {
	cases := []struct {
		typ, url string
		kind     Kind
		name     string
		ok       bool
	}{
		{"", "https://example.com/data/iris.csv", KindHTTPS, "iris.csv", true},
		{"", "s3://b/dir/k.csv", KindS3, "k.csv", true},
		{"gcs", "gs://b/k", KindGCS, "k", true},
		{"", "docker://reg.example/ns/img:1", KindOCI, "img", true},
		{"", "reg.example/ns/img:1", KindOCI, "img", true},
		{"", "img:1", KindOCI, "img", true},
		{"gcs", "s3://b/k", "", "", false}, // Cocos reads this from GCS; we refuse
		{"https", "http://h/x", "", "", false},
		{"", "ftp://h/x", "", "", false},
		{"", "s3://bucketonly", "", "", false},
		{"", "https://u:p@h/x", "", "", false},
		{"", "", "", "", false},
	}
	for _, c := range cases {
		loc, err := Parse(c.typ, c.url)
		if (err == nil) != c.ok {
			t.Errorf("Parse(%q, %q): %v", c.typ, c.url, err)
			continue
		}
		if c.ok && (loc.Kind != c.kind || loc.Name() != c.name) {
			t.Errorf("Parse(%q, %q) = %s %q", c.typ, c.url, loc.Kind, loc.Name())
		}
	}
}

func TestGrantHosts(t *testing.T) {
	c := &manifest.Computation{
		Algorithm: manifest.Algorithm{Source: &manifest.ResourceSource{URL: "https://files.example/algo", Encrypted: true}, KBS: &manifest.KBSConfig{URL: "https://kbs.example:8080", Enabled: true}},
		Datasets: []manifest.Dataset{
			{Source: &manifest.ResourceSource{URL: "s3://bucket/k"}},
			{Source: &manifest.ResourceSource{URL: "docker.io/library/x:1"}},
			{Source: &manifest.ResourceSource{Encrypted: true}, KBS: &manifest.KBSConfig{URL: "http://kbs2.example", Enabled: true}}, // an encrypted upload
			{Filename: "up.csv"},
		},
	}
	got, err := Grant(c, Endpoints{S3: ObjectStore{Endpoint: "http://127.0.0.1:9000"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "127.0.0.1:9000 files.example:443 index.docker.io:443 kbs.example:8080 kbs2.example:80"
	if strings.Join(got, " ") != want {
		t.Fatalf("grant %v, want %s", got, want)
	}
	if g, _ := Grant(c, Endpoints{}); !strings.Contains(strings.Join(g, " "), "bucket.s3.us-east-1.amazonaws.com:443") {
		t.Fatalf("AWS S3 host: %v", g)
	}
}
