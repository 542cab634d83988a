package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/sim"
)

type verifyCase struct {
	name string
	args []string
	code int
	want string
}

func TestAttestationVerify(t *testing.T) {
	tpm := simTPM(t)
	snp, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := &attest.Attester{TPM: tpm, SNP: snp, Simulated: true}
	dir := t.TempDir()
	tee, vtpm, file := tokenFile(t, a, attest.SNPvTPM, dir, "attestation.bin")
	vtpmB, _ := hex.DecodeString(vtpm)
	bundle := filepath.Join(dir, "roots.pem")
	os.WriteFile(bundle, snp.RootsPEM(), 0o600)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"policy":{"policy":"196608","minimumTcb":"0"},"pcr_values":{"sha256":{"0":"`+strings.Repeat("00", 32)+`"}}}`), 0o600)
	tests := []verifyCase{
		{"good", []string{file, "--tee", tee, "--vtpm", vtpm, "--amd-bundle", bundle, "--policy", policy, "--allow-simulated"}, 0, "OK: SNP-vTPM"},
		{"simulated refused", []string{file, "--tee", tee, "--vtpm", vtpm, "--amd-bundle", bundle}, 1, "simulated"},
		{"wrong tee", []string{file, "--tee", strings.Repeat("00", 64), "--vtpm", vtpm, "--amd-bundle", bundle, "--allow-simulated"}, 1, "snp.report_data"},
		{"wrong vtpm", []string{file, "--tee", tee, "--vtpm", strings.Repeat("00", 32), "--allow-simulated"}, 1, "eat.nonce"},
		{"bad hex", []string{file, "--tee", "xyz"}, 2, "not hex"},
		{"missing file", []string{filepath.Join(dir, "nope")}, 1, "reading token"},
	}
	// Trust on first use: a policy written from this token verifies it, and
	// pins the measurement log's child table.
	pinned := filepath.Join(dir, "pinned.json")
	if code, out, errOut := runCLI(t, Options{}, "attestation", "policy", file, "--amd-bundle", bundle, "--allow-simulated", "-o", pinned); code != 0 {
		t.Fatalf("policy: exit %d %s %s", code, out, errOut)
	}
	pol, _ := os.ReadFile(pinned)
	if !strings.Contains(string(pol), `"measurement"`) || !strings.Contains(string(pol), `"sha256"`) {
		t.Fatalf("policy %s", pol)
	}
	tests = append(tests, verifyCase{"pinned policy", []string{file, "--tee", tee, "--vtpm", vtpm, "--amd-bundle", bundle, "--policy", pinned, "--allow-simulated"}, 0, "OK: SNP-vTPM"})
	vtok, err := a.Attest(attest.Request{Nonce: vtpmB, Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	vfile := filepath.Join(dir, "vtpm.bin")
	os.WriteFile(vfile, vtok, 0o600)
	code, vpol, errOut := runCLI(t, Options{}, "attestation", "policy", vfile, "--allow-simulated")
	if code != 0 || !strings.Contains(vpol, "trusted_ak_sha256") {
		t.Fatalf("vTPM policy: exit %d %s %s", code, vpol, errOut)
	}
	vpolFile := filepath.Join(dir, "vpol.json")
	os.WriteFile(vpolFile, []byte(vpol), 0o600)
	tests = append(tests, verifyCase{"vTPM with pinned AK", []string{vfile, "--vtpm", vtpm, "--policy", vpolFile, "--allow-simulated"}, 0, "OK: vTPM"},
		verifyCase{"vTPM without pinned AK", []string{vfile, "--vtpm", vtpm, "--allow-simulated"}, 1, "vtpm.ak"})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append([]string{"attestation", "verify"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
}

// TestVerifyRefusesReplays: an expired token and a token of another boot
// are refused by name.
func TestVerifyRefusesReplays(t *testing.T) {
	tpm := simTPM(t)
	boot, _ := attest.JSONEvent(attest.EventBoot, attest.Boot{BootID: "aaaa"})
	if err := tpm.Extend(boot); err != nil {
		t.Fatal(err)
	}
	a := &attest.Attester{TPM: tpm, Simulated: true, Log: func() attest.EventLog { return attest.EventLog{boot} }}
	vtpm := strings.Repeat("cd", 32)
	vtpmB, _ := hex.DecodeString(vtpm)
	dir := t.TempDir()
	write := func(name string, issued time.Time) string {
		a.Now = func() time.Time { return issued }
		tok, err := a.Attest(attest.Request{Nonce: vtpmB, Platform: attest.VTPM})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, name)
		os.WriteFile(f, tok, 0o600)
		return f
	}
	fresh, old := write("fresh.bin", time.Now()), write("old.bin", time.Now().Add(-time.Hour))
	ak := sha256.Sum256(tpm.AKPub())
	base := []string{"attestation", "verify", "--vtpm", vtpm, "--allow-simulated", "--ak", hex.EncodeToString(ak[:])}
	for _, tc := range []verifyCase{
		{"fresh, this boot", []string{fresh, "--boot-id", "aaaa"}, 0, "boot id (for --boot-id): aaaa"},
		{"another boot", []string{fresh, "--boot-id", "bbbb"}, 1, "eat.boot_id"},
		{"expired", []string{old}, 1, "eat.exp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append(base, tc.args...)...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
}

// simTPM opens the TPM simulator (process-global: tests using it are not
// parallel) and its attestation key, both closed at the end of the test.
func simTPM(t *testing.T) *attest.TPM {
	t.Helper()
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := attest.NewTPM(rw)
	if err != nil {
		rw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close(); rw.Close() })
	return tpm
}

func TestVerifyTDX(t *testing.T) {
	tdx, err := sim.NewTDX(sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := sim.NewTDX(sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := &attest.Attester{TDX: tdx, TDXCollateral: tdx.Collateral, Simulated: true}
	tee := strings.Repeat("ab", 64)
	teeB, _ := hex.DecodeString(tee)
	tok, err := a.Attest(attest.Request{ReportData: teeB, Platform: attest.TDX})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file, col, otherCol, roots := filepath.Join(dir, "tdx.bin"), filepath.Join(dir, "col.json"), filepath.Join(dir, "other.json"), filepath.Join(dir, "roots.pem")
	os.WriteFile(file, tok, 0o600)
	os.WriteFile(col, tdx.Collateral(), 0o600)
	os.WriteFile(otherCol, other.Collateral(), 0o600)
	os.WriteFile(roots, tdx.RootPEM(), 0o600)
	mrtd := sim.DefaultMRTD()
	corimFile := filepath.Join(dir, "tdx.corim")
	if code, out, errOut := runCLI(t, Options{}, "policy", "create-corim", "tdx", "--measurement", hex.EncodeToString(mrtd[:]), "-o", corimFile); code != 0 {
		t.Fatalf("create-corim: %d %s %s", code, out, errOut)
	}
	base := []string{"attestation", "verify", file, "--tee", tee, "--allow-simulated"}
	for _, tc := range []verifyCase{
		{"collateral in the simulated token", nil, 0, "TDX MRTD: " + hex.EncodeToString(mrtd[:])},
		{"verifier's collateral and roots", []string{"--tdx-collateral", col, "--intel-roots", roots}, 0, "OK: TDX"},
		{"another platform's collateral", []string{"--tdx-collateral", otherCol}, 1, "tdx.tcb"},
		{"Intel's root only", []string{"--tdx-collateral", col, "--intel-roots", "../../attest/verify/intel_sgx_root_ca.pem"}, 1, "tdx.chain"},
		{"wrong tee", []string{"--tee", strings.Repeat("00", 64)}, 1, "eat.nonce"},
		{"CoRIM", []string{"--policy", corimFile, "--allow-unsigned-corim"}, 0, "corim.tdx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append(append([]string{}, base...), tc.args...)...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
}

func TestVerifyAzure(t *testing.T) {
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	snp, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.ProvisionAzureSNP(rw, snp); err != nil {
		t.Fatal(err)
	}
	tpm, err := attest.NewTPM(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	a := &attest.Attester{TPM: tpm, Simulated: true, Azure: &attest.AzureVM{SNPCerts: snp.SNPCertChain}}
	dir := t.TempDir()
	tee, vtpm, file := tokenFile(t, a, attest.Azure, dir, "azure.bin")
	bundle := filepath.Join(dir, "roots.pem")
	os.WriteFile(bundle, snp.RootsPEM(), 0o600)
	m := sim.DefaultMeasurement()
	corimFile := filepath.Join(dir, "azure.corim")
	if code, out, errOut := runCLI(t, Options{}, "policy", "create-corim", "azure", "--measurement", hex.EncodeToString(m[:]), "-o", corimFile); code != 0 {
		t.Fatalf("create-corim: %d %s %s", code, out, errOut)
	}
	base := []string{"attestation", "verify", file, "--vtpm", vtpm, "--amd-bundle", bundle, "--allow-simulated"}
	for _, tc := range []verifyCase{
		{"good", []string{"--tee", tee}, 0, "OK: Azure"},
		{"CoRIM", []string{"--tee", tee, "--policy", corimFile, "--allow-unsigned-corim"}, 0, "corim.snp"},
		{"wrong tee", []string{"--tee", strings.Repeat("00", 64)}, 1, "azure.nonce"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append(append([]string{}, base...), tc.args...)...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
}

// tokenFile has a attest p over fixed nonces and writes the token to
// dir/name; it returns the nonces (hex) and the file.
func tokenFile(t *testing.T, a *attest.Attester, p attest.Platform, dir, name string) (tee, vtpm, file string) {
	t.Helper()
	tee, vtpm = strings.Repeat("ab", 64), strings.Repeat("cd", 32)
	teeB, _ := hex.DecodeString(tee)
	vtpmB, _ := hex.DecodeString(vtpm)
	tok, err := a.Attest(attest.Request{ReportData: teeB, Nonce: vtpmB, Platform: p})
	if err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, name)
	if err := os.WriteFile(file, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	return tee, vtpm, file
}

// TestPolicyFromTDXToken: trust on first use pins a TDX token's registers,
// and the pinned policy refuses another TD.
func TestPolicyFromTDXToken(t *testing.T) {
	tdx, err := sim.NewTDX(sim.TDXOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := sim.NewTDX(sim.TDXOptions{MRTD: [48]byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tee, vtpm, file := tokenFile(t, &attest.Attester{TDX: tdx, TDXCollateral: tdx.Collateral, Simulated: true}, attest.TDX, dir, "tdx.bin")
	_, _, otherFile := tokenFile(t, &attest.Attester{TDX: other, TDXCollateral: other.Collateral, Simulated: true}, attest.TDX, dir, "other.bin")
	pol := filepath.Join(dir, "tdx.json")
	if code, out, errOut := runCLI(t, Options{}, "attestation", "policy", file, "--allow-simulated", "-o", pol); code != 0 {
		t.Fatalf("policy: %d %s %s", code, out, errOut)
	}
	if b, _ := os.ReadFile(pol); !strings.Contains(string(b), `"mrTd"`) {
		t.Fatalf("policy %s", b)
	}
	for _, tc := range []verifyCase{
		{"same TD", []string{file}, 0, "OK: TDX"},
		{"another TD", []string{otherFile}, 1, "tdx.mrtd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, Options{}, append([]string{"attestation", "verify", "--tee", tee, "--vtpm", vtpm, "--allow-simulated", "--policy", pol}, tc.args...)...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
}
