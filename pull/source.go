package pull

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/proto/config"
)

// Kind is a source type, with Cocos's names (Source.type).
type Kind string

// The source types Cocos documents.
const (
	KindHTTP  Kind = "http"
	KindHTTPS Kind = "https"
	KindS3    Kind = "s3"
	KindGCS   Kind = "gcs"
	KindOCI   Kind = "oci-image"
)

// Location is a parsed source URL.
type Location struct {
	Kind Kind
	URL  string // as the manifest gave it
	// HTTP(S): the URL. S3/GCS: bucket and key. OCI: the image reference.
	HTTP        *url.URL
	Bucket, Key string
	Image       name.Reference
}

// Parse reads a source URL the way Cocos infers its type (scheme docker or
// oci → OCI, s3, gs → GCS, https, http; no scheme but a "/" or an opaque
// name:tag → OCI image), and then honours typ when it is set: a type that
// disagrees with the URL is refused, where Cocos drops the type and reads
// s3:// from Google Cloud Storage.
func Parse(typ, raw string) (*Location, error) {
	if raw == "" {
		return nil, classErr(ErrInvalidSource, "empty URL")
	}
	inferred, rest, err := infer(raw)
	if err != nil {
		return nil, err
	}
	if typ != "" {
		want := Kind(strings.ToLower(typ))
		switch want {
		case KindHTTP, KindHTTPS, KindS3, KindGCS, KindOCI:
		case "oci", "docker":
			want = KindOCI
		default:
			return nil, classErr(ErrInvalidSource, "source type %q (want oci-image, s3, gcs, https or http)", typ)
		}
		if want != inferred {
			return nil, classErr(ErrInvalidSource, "source type %q but the URL %q is %s", typ, raw, inferred)
		}
	}
	loc := &Location{Kind: inferred, URL: raw}
	switch inferred {
	case KindHTTP, KindHTTPS:
		u, err := url.Parse(raw)
		if err != nil {
			return nil, classErr(ErrInvalidSource, "%v", err)
		}
		if u.Host == "" || u.User != nil {
			return nil, classErr(ErrInvalidSource, "URL %q needs a host and no user info", raw)
		}
		loc.HTTP = u
	case KindS3, KindGCS:
		bucket, key, ok := strings.Cut(rest, "/")
		if !ok || bucket == "" || key == "" {
			return nil, classErr(ErrInvalidSource, "URL %q is not <scheme>://bucket/key", raw)
		}
		loc.Bucket, loc.Key = bucket, key
	case KindOCI:
		ref, err := name.ParseReference(rest, name.StrictValidation)
		if err != nil {
			// Without a tag or digest, the registry's "latest", as skopeo.
			if ref, err = name.ParseReference(rest); err != nil {
				return nil, classErr(ErrInvalidSource, "image reference %q: %v", rest, err)
			}
		}
		loc.Image = ref
	}
	return loc, nil
}

// infer returns the kind and the URL without its scheme (for s3, gs, oci).
func infer(raw string) (Kind, string, error) {
	scheme, rest, hasScheme := strings.Cut(raw, "://")
	if hasScheme {
		switch strings.ToLower(scheme) {
		case "docker", "oci":
			return KindOCI, rest, nil
		case "s3":
			return KindS3, rest, nil
		case "gs":
			return KindGCS, rest, nil
		case "https":
			return KindHTTPS, raw, nil
		case "http":
			return KindHTTP, raw, nil
		}
		return "", "", classErr(ErrInvalidSource, "unsupported source URL format %q", raw)
	}
	if strings.Contains(raw, "/") || strings.Contains(raw, ":") {
		return KindOCI, raw, nil
	}
	return "", "", classErr(ErrInvalidSource, "unsupported source URL format %q", raw)
}

// Name is the file name a pulled resource takes when the manifest gives
// none: the last path element of the URL or key, or the image's repository
// name.
func (l *Location) Name() string {
	var n string
	switch l.Kind {
	case KindHTTP, KindHTTPS:
		n = path.Base(l.HTTP.Path)
	case KindS3, KindGCS:
		n = path.Base(l.Key)
	case KindOCI:
		n = path.Base(l.Image.Context().RepositoryStr())
	}
	if n == "." || n == "/" || n == "" {
		return ""
	}
	return n
}

// HostPort is the host and port a fetch of l connects to first (S3/GCS:
// the endpoint; OCI: the registry). Redirects may lead elsewhere; the
// egress refuses those unless they are granted too.
func (l *Location) HostPort(ep Endpoints) (string, error) {
	switch l.Kind {
	case KindHTTP, KindHTTPS:
		return hostPort(l.HTTP)
	case KindS3, KindGCS:
		e := ep.S3
		if l.Kind == KindGCS {
			e = ep.GCS
		}
		u, err := url.Parse(e.endpoint(l.Kind))
		if err != nil {
			return "", classErr(ErrInvalidSource, "%s endpoint: %v", l.Kind, err)
		}
		if !e.PathStyle && e.Endpoint == "" {
			u.Host = l.Bucket + "." + u.Host // virtual-hosted style
		}
		return hostPort(u)
	case KindOCI:
		reg := l.Image.Context().RegistryStr()
		if reg == name.DefaultRegistry {
			reg = "index.docker.io"
		}
		if _, _, err := net.SplitHostPort(reg); err == nil {
			return reg, nil
		}
		return net.JoinHostPort(reg, "443"), nil
	}
	return "", classErr(ErrInvalidSource, "kind %q", l.Kind)
}

func hostPort(u *url.URL) (string, error) {
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "https":
			port = "443"
		case "http":
			port = "80"
		default:
			return "", classErr(ErrInvalidSource, "URL %q: no port for scheme %q", u, u.Scheme)
		}
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// Endpoints are the object stores' settings (from Cocos's and AWS's
// variables; see docs/agent.md).
type Endpoints struct {
	S3, GCS ObjectStore
}

// ObjectStore is one S3-compatible endpoint and its credentials.
type ObjectStore struct {
	// Endpoint is the base URL; "" means AWS S3 in Region
	// (https://s3.<region>.amazonaws.com) or, for GCS, Google's XML API
	// (https://storage.googleapis.com).
	Endpoint string
	// Region; "" means us-east-1 (GCS: "auto").
	Region string
	// AccessKeyID and SecretAccessKey (and SessionToken) sign requests
	// with SigV4. Both empty: anonymous requests.
	AccessKeyID, SecretAccessKey, SessionToken string
	// PathStyle addresses buckets as <endpoint>/<bucket>; always on with
	// a custom Endpoint.
	PathStyle bool
}

func (o ObjectStore) region(k Kind) string {
	switch {
	case o.Region != "":
		return o.Region
	case k == KindGCS:
		return "auto"
	}
	return "us-east-1"
}

func (o ObjectStore) endpoint(k Kind) string {
	switch {
	case o.Endpoint != "":
		return o.Endpoint
	case k == KindGCS:
		return "https://storage.googleapis.com"
	}
	return fmt.Sprintf("https://s3.%s.amazonaws.com", o.region(k))
}

// Grant returns the host:port entries a computation's pull mode must
// reach: every pulled source's first host (Location.HostPort) and the KBS
// of every encrypted one, sorted, without repeats. The supervisor grants
// exactly these to the agent's client in the egress, for this computation.
func Grant(c *manifest.Computation, ep Endpoints) ([]string, error) {
	seen := map[string]bool{}
	add := func(what string, src *manifest.ResourceSource, kbs *manifest.KBSConfig) error {
		if !src.Pulled() && !(src != nil && src.Encrypted) {
			return nil
		}
		if src.Pulled() {
			loc, err := Parse(src.Type, src.URL)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			hp, err := loc.HostPort(ep)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			seen[hp] = true
		}
		if src.Encrypted && kbs != nil && kbs.Enabled && kbs.URL != "" {
			u, err := url.Parse(kbs.URL)
			if err != nil || u.Host == "" {
				return fmt.Errorf("%s: KBS URL %q: %v", what, kbs.URL, err)
			}
			hp, err := hostPort(u)
			if err != nil {
				return fmt.Errorf("%s: KBS: %w", what, err)
			}
			seen[hp] = true
		}
		return nil
	}
	if err := add("algorithm", c.Algorithm.Source, c.Algorithm.KBS); err != nil {
		return nil, err
	}
	for i, d := range c.Datasets {
		if err := add("dataset "+d.Label(i), d.Source, d.KBS); err != nil {
			return nil, err
		}
	}
	out := make([]string, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out, nil
}

// EndpointsFrom converts the agent's pull settings.
func EndpointsFrom(s *config.PullSettings) Endpoints {
	conv := func(o *config.ObjectStoreSettings) ObjectStore {
		return ObjectStore{Endpoint: o.GetEndpoint(), Region: o.GetRegion(), AccessKeyID: o.GetAccessKeyId(),
			SecretAccessKey: o.GetSecretAccessKey(), SessionToken: o.GetSessionToken(), PathStyle: o.GetPathStyle()}
	}
	return Endpoints{S3: conv(s.GetS3()), GCS: conv(s.GetGcs())}
}
