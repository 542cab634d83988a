package manifest

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/cocos/rolesig"
)

func pubDER(t testing.TB) []byte {
	t.Helper()
	_, pub, err := rolesig.NewKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	_, der, err := rolesig.ParsePublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sample(t testing.TB) string {
	k := base64.StdEncoding.EncodeToString(pubDER(t))
	h := strings.Repeat("7,", 31) + "7"
	return `{"id":"c1","name":"n","datasets":[{"hash":[` + h + `],"user_key":"` + k + `","filename":"a.csv"}],` +
		`"algorithm":{"hash":[` + h + `],"user_key":"` + k + `","algo_type":"python","algo_args":["-x"]},` +
		`"result_consumers":[{"user_key":"` + k + `"}],"agent_config":{"attested_tls":true}}`
}

func TestParse(t *testing.T) {
	good := sample(t)
	tests := []struct {
		name, json, wantErr string
	}{
		{"valid", good, ""},
		{"hash as base64 string is refused", strings.Replace(good, `"hash":[`+strings.Repeat("7,", 31)+`7]`, `"hash":"AAAA"`, 1), "cannot unmarshal string"},
		{"unknown field", strings.Replace(good, `"id":"c1"`, `"id":"c1","bogus":1`, 1), "unknown field"},
		{"trailing data", good + "{}", "trailing data"},
		{"slash in filename", strings.Replace(good, "a.csv", "../a.csv", 1), "contains / or NUL"},
		{"no filename is allowed (matched by hash)", strings.Replace(good, `"filename":"a.csv"`, `"filename":""`, 1), ""},
		{"dot filename", strings.Replace(good, `"filename":"a.csv"`, `"filename":".."`, 1), "is not a file name"},
		{"two datasets without a filename", strings.Replace(good, `"datasets":[{`, `"datasets":[{"hash":[`+strings.Repeat("1,", 31)+`1],"user_key":"`+base64.StdEncoding.EncodeToString(pubDER(t))+`"},{`, 1), ""},
		{"bad key of an unnamed dataset", strings.Replace(good, `"datasets":[{`, `"datasets":[{"user_key":"AAAA"},{`, 1), "dataset 0 (no filename) user_key"},
		{"bad key", strings.Replace(good, `"result_consumers":[{"user_key":"`, `"result_consumers":[{"user_key":"AAAA`, 1), "result consumer 0 user_key"},
		{"bad algo type", strings.Replace(good, `"python"`, `"cobol"`, 1), "algo_type \"cobol\""},
		{"short hash array", strings.Replace(good, strings.Repeat("7,", 31)+"7", "1,2", 1), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, ac, err := Parse([]byte(tc.json))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if tc.name == "valid" && (c.ID != "c1" || ac == nil || !ac.AttestedTLS || c.Algorithm.Hash[0] != 7) {
					t.Fatalf("decoded %+v %+v", c, ac)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRunReqRoundTrip(t *testing.T) {
	c, ac, err := Parse([]byte(sample(t)))
	if err != nil {
		t.Fatal(err)
	}
	c2, ac2, err := FromRunReq(c.RunReq(ac))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(c)
	b, _ := json.Marshal(c2)
	if string(a) != string(b) || *ac != *ac2 {
		t.Fatalf("round trip changed the manifest:\n%s\n%s", a, b)
	}
	r := c.RunReq(nil)
	r.Datasets[0].Hash = r.Datasets[0].Hash[:31]
	if _, _, err := FromRunReq(r); err == nil || !strings.Contains(err.Error(), "dataset 0 hash has 31 bytes") {
		t.Fatalf("short hash: %v", err)
	}
}

func TestChecksumIgnoresFormattingAndAgentConfig(t *testing.T) {
	s := sample(t)
	a, err := Checksum([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	json.Unmarshal([]byte(s), &v)
	delete(v, "agent_config")
	pretty, _ := json.MarshalIndent(v, "", "   ")
	b, err := Checksum(pretty)
	if err != nil || a != b {
		t.Fatalf("checksums differ: %x %x %v", a, b, err)
	}
	// A canonical manifest always has the algorithm object and its hash array.
	out, _ := json.Marshal(&Computation{})
	if string(out) != `{"algorithm":{"hash":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}` {
		t.Fatalf("canonical empty manifest %s", out)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample(f)))
	f.Add([]byte(`{"datasets":[{"filename":"x"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses must survive the wire round trip and validate again.
		if _, _, err := FromRunReq(c.RunReq(nil)); err != nil {
			t.Fatalf("parsed manifest fails the wire round trip: %v", err)
		}
		if _, err := Checksum(data); err != nil {
			t.Fatalf("parsed manifest has no checksum: %v", err)
		}
	})
}
