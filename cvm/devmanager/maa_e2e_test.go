package devmanager_test

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/attest/maa"
	"github.com/cvmd/cvmd/attest/maa/maatest"
)

// TestE2EAzureToken is Cocos's azure-token end to end against a real `cvmd
// supervise --dev` whose attestation child simulates an Azure TDX CVM (the
// TPM simulator provisioned as Azure's vTPM, a simulated TD), with a
// loopback stand-in for Microsoft Azure Attestation (maatest: the one part
// that cannot run here). The real `cvm` asks the agent for a token; the
// attestation child writes the nonce's user data to the HCL's NV index, the
// simulated paravisor refreshes the HCL report, the child quotes it; the
// agent, which has no network, posts quote and runtime claims to the MAA
// URL of the environment through the egress child (which grants it that
// host:port only); the stand-in checks the quote's signatures, that
// REPORTDATA binds the claims and that the claims carry the nonce's user
// data, and signs a JWT; the CLI checks it against the stand-in's keys
// (<maa>/certs) and saves it. Then the refusals: a token whose user data is
// another nonce's (the CLI refuses and saves nothing), MAA refusing the
// evidence (its 400 body reaches the CLI), MAA unreachable.
func TestE2EAzureToken(t *testing.T) {
	g, m, cliEnv := startWithMAA(t, "azure-tdx")

	nonce := make([]byte, 32)
	rand.Read(nonce)
	tokFile := filepath.Join(g.work, "token.jwt")
	out, err := g.cvmEnv(cliEnv, "--json", "attestation", "get", "azure-token", "--token", hex.EncodeToString(nonce), "--maa", m.URL, "-o", tokFile)
	if err != nil {
		t.Fatalf("azure-token: %v\n%s", err, out)
	}
	var res struct {
		File     string         `json:"file"`
		Verified bool           `json:"verified"`
		Claims   map[string]any `json:"claims"`
	}
	if err := json.Unmarshal([]byte(lastLine(out)), &res); err != nil || !res.Verified || res.File != tokFile {
		t.Fatalf("azure-token output %q: %v", out, err)
	}
	t.Logf("azure-token: %s", out)
	ud := maa.UserData(nonce)
	rt, _ := res.Claims["x-ms-runtime"].(map[string]any)
	if rt["user-data"] != hex.EncodeToString(ud[:]) || res.Claims["x-ms-attestation-type"] != "tdxvm" || res.Claims["iss"] != m.URL {
		t.Fatalf("token claims %v", res.Claims)
	}
	jwt, _ := os.ReadFile(tokFile)
	cl, err := (&maa.Client{URL: m.URL}).Validate(string(jwt), m.JWKS(), time.Now(), 0)
	if err != nil {
		t.Fatalf("the saved token: %v", err)
	}
	if err := cl.CheckUserData(nonce); err != nil {
		t.Fatal(err)
	}
	if n, refused := m.Issued(); n != 1 || len(refused) != 0 {
		t.Fatalf("MAA issued %d tokens, refused %v", n, refused)
	}

	t.Run("token of another nonce", func(t *testing.T) {
		other := maa.UserData([]byte("an earlier nonce"))
		m.SetTamper(func(c map[string]any) { c["x-ms-runtime"].(map[string]any)["user-data"] = hex.EncodeToString(other[:]) })
		defer m.SetTamper(nil)
		f := filepath.Join(g.work, "tampered.jwt")
		out, err := g.cvmEnv(cliEnv, "attestation", "get", "azure-token", "--token", "0102", "--maa", m.URL, "-o", f)
		if err == nil || !strings.Contains(out, "user-data") || !strings.Contains(out, "not saved") {
			t.Fatalf("a token over another nonce: %v\n%s", err, out)
		}
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatalf("the refused token was saved: %v", err)
		}
	})
	t.Run("signed by another key", func(t *testing.T) {
		other, err := maatest.Start()
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		keys := filepath.Join(g.work, "other-jwks.json")
		os.WriteFile(keys, other.JWKS(), 0o644)
		out, err := g.cvmEnv(cliEnv, "attestation", "get", "azure-token", "--token", "03", "--maa", m.URL, "--jwks", keys, "-o", filepath.Join(g.work, "x.jwt"))
		if err == nil || !strings.Contains(out, "signature") {
			t.Fatalf("a token checked against other keys: %v\n%s", err, out)
		}
	})
	t.Run("MAA refuses the evidence", func(t *testing.T) {
		// Roots the simulated TD's quote does not lead to: MAA answers 400.
		m.SetRoots(x509.NewCertPool())
		defer m.SetRoots(nil)
		out, err := g.cvmEnv(cliEnv, "attestation", "get", "azure-token", "--token", "04", "--maa", m.URL, "-o", filepath.Join(g.work, "y.jwt"))
		t.Logf("MAA refuses: %s", out)
		if err == nil || !strings.Contains(out, "MAA refused the evidence: 400") || !strings.Contains(out, "InvalidQuote") {
			t.Fatalf("MAA's refusal: %v\n%s", err, out)
		}
	})
	t.Run("MAA unreachable", func(t *testing.T) {
		m.Close()
		out, err := g.cvmEnv(cliEnv, "attestation", "get", "azure-token", "--token", "05", "--maa", m.URL, "--jwks", filepath.Join(g.work, "other-jwks.json"), "-o", filepath.Join(g.work, "z.jwt"))
		t.Logf("MAA down: %s", out)
		if err == nil || !strings.Contains(out, "MAA unreachable") || !strings.Contains(out, m.URL) {
			t.Fatalf("MAA down: %v\n%s", err, out)
		}
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestE2EAzureTokenOffAzure: a VM that is not an Azure CVM (simulated
// SEV-SNP) refuses azure-token, saying why, and never asks MAA.
func TestE2EAzureTokenOffAzure(t *testing.T) {
	g, m, cliEnv := startWithMAA(t, "snp")
	out, err := g.cvmEnv(cliEnv, "attestation", "get", "azure-token", "--token", "01", "--maa", m.URL, "-o", filepath.Join(g.work, "t.jwt"))
	t.Logf("off Azure: %s", out)
	if err == nil || !strings.Contains(out, "not an Azure confidential VM") {
		t.Fatalf("azure-token off Azure: %v\n%s", err, out)
	}
	if n, refused := m.Issued(); n != 0 || len(refused) != 0 {
		t.Fatalf("MAA was asked: %d tokens, refusals %v", n, refused)
	}
}

// startWithMAA starts an MAA stand-in and a guest simulating platform
// (CVMD_SIMULATED_PLATFORM) whose environment names the stand-in, with the
// sample computation waiting for its algorithm, and returns the CLI's
// environment (trusting the stand-in's TLS certificate, to fetch its keys)
// once the agent answers through the ingress.
func startWithMAA(t *testing.T, platform string) (*guest, *maatest.Server, map[string]string) {
	g := newGuest(t)
	m, err := maatest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	caFile := filepath.Join(g.work, "maa-ca.pem")
	os.WriteFile(caFile, m.CAPEM(), 0o644)
	srv := g.startManager(true)
	g.startCvmdEnv("CVMD_SIMULATED_PLATFORM=" + platform + "\nAGENT_MAA_URL=" + m.URL + "\nCVMD_PULL_CA_CERTS=" + caFile + "\n")
	g.waitRunRes(srv)
	cliEnv := map[string]string{"SSL_CERT_FILE": caFile}
	g.retryEnv(cliEnv, "attestation", "get", "vtpm", "--vtpm", strings.Repeat("ab", 32), "-o", filepath.Join(g.work, "vtpm.bin"))
	return g, m, cliEnv
}
