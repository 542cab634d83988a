package strictcbor

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func TestConfigIsValid(t *testing.T) {
	if _, err := DecMode(); err != nil {
		t.Fatal(err)
	}
}

func TestRefuses(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x81}, MaxNestedLevels+1), 0x00) // [[[...0...]]]
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"duplicate map key", []byte{0xa2, 0x01, 0x01, 0x01, 0x02}, "duplicate map key"},
		{"indefinite length", []byte{0x9f, 0x01, 0xff}, "indefinite-length"},
		{"invalid UTF-8", []byte{0x61, 0xff}, "UTF-8"},
		{"too deep", deep, "exceeded max nested level"},
		{"trailing bytes", []byte{0x01, 0x02}, "extraneous data"},
		{"truncated", []byte{0x82, 0x01}, "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v any
			err := Unmarshal(tc.in, &v)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Unmarshal(%x) = %v, want an error containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestArrayLimit(t *testing.T) {
	big, err := cbor.Marshal(make([]int, MaxArrayElements+1))
	if err != nil {
		t.Fatal(err)
	}
	var v []int
	if err := Unmarshal(big, &v); err == nil || !strings.Contains(err.Error(), "exceeded max number of elements") {
		t.Fatalf("got %v, want the array limit", err)
	}
	ok, _ := cbor.Marshal(make([]int, MaxArrayElements))
	if err := Unmarshal(ok, &v); err != nil {
		t.Fatalf("array at the limit: %v", err)
	}
}

func TestUnmarshalFirst(t *testing.T) {
	var v int
	rest, err := UnmarshalFirst([]byte{0x01, 0x02}, &v)
	if err != nil || v != 1 || !bytes.Equal(rest, []byte{0x02}) {
		t.Fatalf("got %d, %x, %v", v, rest, err)
	}
}

var otherDecoder = regexp.MustCompile(`cbor\.DecOptions\{|(^|[^a-z])cbor\.(Unmarshal|UnmarshalFirst|NewDecoder)\(`)

// TestOnlyDecoderConfig fails when a package other than this one builds its
// own CBOR decoder configuration: untrusted CBOR has one set of limits.
func TestOnlyDecoderConfig(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	self, _ := filepath.Abs(".")
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == ".git" || n == "testdata" || n == "out" || path == self {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if m := otherDecoder.Find(b); m != nil {
			rel, _ := filepath.Rel(root, path)
			t.Errorf("%s uses %s: decode untrusted CBOR with strictcbor instead", rel, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
