package pull_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/pull"
)

// TestFetchRate measures the fetcher alone (no agent): HTTPS through the
// real egress proxy into the staging dir, plain and encrypted. Set
// CVMD_PULL_RATE_MIB to run it (a profiling aid, not a make bench figure).
func TestFetchRate(t *testing.T) {
	mib, err := strconv.Atoi(os.Getenv("CVMD_PULL_RATE_MIB"))
	if err != nil || mib <= 0 {
		t.Skip("CVMD_PULL_RATE_MIB=<MiB> runs it")
	}
	e := newEnv(t)
	src := filepath.Join(e.dir, "d.dat")
	sum := writeRandom(t, src, int64(mib)<<20)
	key := bytes.Repeat([]byte{5}, 32)
	sealed := filepath.Join(e.dir, "d.enc")
	seal(t, src, sealed, key)
	e.srv.Add("/d.dat", src)
	e.srv.Add("/d.enc", sealed)
	for _, enc := range []bool{false, true} {
		r := pull.Resource{What: "d", Source: manifest.ResourceSource{URL: e.srv.URL("/d.dat")}, Hash: sum}
		if enc {
			r.Source = manifest.ResourceSource{URL: e.srv.URL("/d.enc"), Encrypted: true, KBSResourcePath: "a/b/c"}
			r.KBS = &manifest.KBSConfig{URL: "https://k", Enabled: true}
		}
		f := e.fetcher(func(c *pull.Config) { c.Keys = fixedKey(key) })
		start := time.Now()
		res, err := f.Fetch(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("encrypted=%v: %d MiB in %v: %.1f MiB/s", enc, mib, time.Since(start), float64(mib)/time.Since(start).Seconds())
		os.Remove(res.Path)
	}
}
