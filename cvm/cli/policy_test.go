package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
)

func writeKeyPair(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(k)
	spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	priv, pub = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".pub.pem")
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o600)
	return priv, pub
}

// TestCoRIMPolicy makes CoRIMs with "policy create-corim" and verifies a
// simulated SNP-vTPM token against them.
func TestCoRIMPolicy(t *testing.T) {
	tpm := simTPM(t)
	snp, err := sim.NewSNP(sim.SNPOptions{GuestSVN: 2})
	if err != nil {
		t.Fatal(err)
	}
	a := &attest.Attester{TPM: tpm, SNP: snp, Simulated: true}
	tee, vtpm := strings.Repeat("ab", 64), strings.Repeat("cd", 32)
	teeB, _ := hex.DecodeString(tee)
	vtpmB, _ := hex.DecodeString(vtpm)
	tok, err := a.Attest(attest.Request{ReportData: teeB, Nonce: vtpmB, Platform: attest.SNPvTPM})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file, bundle := filepath.Join(dir, "attestation.bin"), filepath.Join(dir, "roots.pem")
	os.WriteFile(file, tok, 0o600)
	os.WriteFile(bundle, snp.RootsPEM(), 0o600)
	m := sim.DefaultMeasurement()
	meas := hex.EncodeToString(m[:])
	signKey, signPub := writeKeyPair(t, dir, "signer")
	_, otherPub := writeKeyPair(t, dir, "other")

	create := func(name string, args ...string) string {
		t.Helper()
		out := filepath.Join(dir, name)
		code, stdout, stderr := runCLI(t, Options{}, append([]string{"policy", "create-corim"}, append(args, "-o", out)...)...)
		if code != 0 {
			t.Fatalf("create-corim %v: exit %d %s %s", args, code, stdout, stderr)
		}
		return out
	}
	unsigned := create("snp.corim", "snp", "--measurement", meas, "--svn", "2", "--policy", "0x30000")
	signed := create("snp-signed.corim", "snp", "--measurement", meas, "--signing-key", signKey, "--signer-name", "test")
	wrong := create("wrong.corim", "snp", "--measurement", strings.Repeat("00", 48))
	svn3 := create("svn3.corim", "snp", "--measurement", meas, "--svn", "3")
	cocosEmpty, _ := filepath.Abs("../../attest/corim/testdata/cocos-snp-default.cbor")

	base := []string{"attestation", "verify", file, "--tee", tee, "--vtpm", vtpm, "--amd-bundle", bundle, "--allow-simulated"}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unsigned without the flag", []string{"--policy", unsigned}, 1, "corim.unsigned"},
		{"unsigned with the flag", []string{"--policy", unsigned, "--allow-unsigned-corim"}, 0, "corim.snp"},
		{"signed, trusted key", []string{"--policy", signed, "--corim-key", signPub}, 0, "corim.snp"},
		{"signed, other key", []string{"--policy", signed, "--corim-key", otherPub}, 1, "corim.signature"},
		{"signed, no key", []string{"--policy", signed}, 1, "corim.signature"},
		{"wrong measurement", []string{"--policy", wrong, "--allow-unsigned-corim"}, 1, "corim.snp.measurement"},
		{"guest SVN too low", []string{"--policy", svn3, "--allow-unsigned-corim"}, 1, "corim.snp.guest_svn"},
		{"Cocos's empty CoRIM", []string{"--policy", cocosEmpty, "--allow-unsigned-corim"}, 1, "corim.empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append(base, tc.args...)...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no measurement", []string{"snp"}, "--measurement is required"},
		{"short measurement", []string{"snp", "--measurement", "abcd"}, "want 48"},
		{"tdx without MRTD", []string{"tdx"}, "MRTD"},
		{"tdx svn", []string{"tdx", "--measurement", meas, "--svn", "1"}, "no guest SVN"},
		{"vtpm nothing", []string{"vtpm"}, "without a measurement"},
		{"vtpm bad pcr", []string{"vtpm", "--pcr", "24=" + strings.Repeat("00", 32)}, "0–23"},
		{"azure bad tee", []string{"azure", "--tee", "sgx"}, "want snp or tdx"},
	} {
		t.Run("create "+tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append([]string{"policy", "create-corim"}, tc.args...)...)
			if code != 2 || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, %q %q; want usage error with %q", code, out, errOut, tc.want)
			}
		})
	}
	for _, args := range [][]string{
		{"tdx", "--measurement", meas, "--rtmrs", meas + ",," + meas, "--mr-seam", meas, "--td-attributes", "0", "--xfam", "0xe7"},
		{"vtpm", "--pcr", "16=" + strings.Repeat("11", 32), "--pcr", "16=" + strings.Repeat("22", 48), "--ak", strings.Repeat("33", 32)},
		{"azure", "--tee", "tdx", "--measurement", meas},
		{"azure", "--measurement", meas},
	} {
		create(args[0]+".corim", args...)
	}

	// --json says whether the evidence was bound to the caller's nonces.
	for _, tc := range []struct {
		args  []string
		fresh bool
	}{
		{[]string{"--tee", tee, "--vtpm", vtpm}, true},
		{nil, false},
	} {
		code, out, errOut := runCLI(t, Options{}, append([]string{"--json", "attestation", "verify", file, "--amd-bundle", bundle, "--allow-simulated"}, tc.args...)...)
		var v struct {
			Fresh *bool `json:"fresh"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Fresh == nil || *v.Fresh != tc.fresh {
			t.Fatalf("exit %d, %q %q: want fresh %v", code, out, errOut, tc.fresh)
		}
	}
}
