package devmanager_test

import (
	"archive/zip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/sha3"

	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/proto/cvms"
)

// writeTLSFiles makes a CA and a server certificate for 127.0.0.1 signed by
// it, as PEM files in dir: the CA file, the certificate and its key.
func writeTLSFiles(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caT, caT, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvT := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "cvmd-e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, srvT, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return caFile, certFile, keyFile
}

// cvmEnv runs cvm with extra environment variables.
func (g *guest) cvmEnv(env map[string]string, args ...string) (string, error) {
	cmd := exec.CommandContext(g.ctx, filepath.Join(g.bin, "cvm"), args...)
	cmd.Dir = g.work
	cmd.Env = append(os.Environ(), "AGENT_GRPC_URL="+g.agentAddr, "AGENT_GRPC_TIMEOUT=5s")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// retryEnv runs cvm with env until it succeeds (the ingress restarts with the
// computation's TLS mode, so its first connections may be refused).
func (g *guest) retryEnv(env map[string]string, args ...string) {
	g.t.Helper()
	var out string
	var err error
	for i := 0; i < 200; i++ {
		if out, err = g.cvmEnv(env, args...); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatalf("cvm %v with %v: %v\n%s", args, env, err, out)
}

func (g *guest) resultEnv(env map[string]string) string {
	out := filepath.Join(g.work, "out")
	g.retryEnv(env, "result", g.priv, "-o", out)
	zr, err := zip.OpenReader(filepath.Join(out, "results.zip"))
	if err != nil {
		g.t.Fatal(err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if f.Name == "result.txt" {
			rc, _ := f.Open()
			b, _ := io.ReadAll(rc)
			rc.Close()
			return string(b)
		}
	}
	g.t.Fatal("no result.txt in results.zip")
	return ""
}

// pcr16After is PCR 16 (SHA-256 bank) after one manifest extension from
// reset: SHA-256(0³² ‖ SHA3-256(manifest JSON)), and the SHA3-256 itself.
func pcr16After(t *testing.T, req *cvms.ComputationRunReq) (pcr, sha3hex string) {
	c, _, err := manifest.FromRunReq(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	m := sha3.Sum256(b)
	p := sha256.Sum256(append(make([]byte, 32), m[:]...))
	return hex.EncodeToString(p[:]), hex.EncodeToString(m[:])
}

// TestE2EIngressTLSFromManifest: the computation's AgentConfig sets the
// ingress's TLS mode. Certificate files are named by paths the ingress's
// sandbox cannot see (the supervisor passes them inline). With TLS, cvm
// trusting the CA runs the computation and a plaintext cvm is refused. With
// aTLS, cvm verifies the (simulated) evidence against a policy pinning the
// manifest's PCR 16 value and event: it runs the computation, while a
// policy expecting another manifest, and a plaintext cvm, are refused.
func TestE2EIngressTLSFromManifest(t *testing.T) {
	tests := []struct {
		name   string
		config func(certFile, keyFile string) *cvms.AgentConfig
		env    func(t *testing.T, g *guest, caFile string) (ok, refused map[string]string)
	}{
		{"TLS", func(c, k string) *cvms.AgentConfig { return &cvms.AgentConfig{CertFile: c, KeyFile: k} },
			func(t *testing.T, g *guest, ca string) (map[string]string, map[string]string) {
				return map[string]string{"AGENT_GRPC_SERVER_CA_CERTS": ca}, nil
			}},
		{"aTLS", func(string, string) *cvms.AgentConfig { return &cvms.AgentConfig{AttestedTls: true} },
			func(t *testing.T, g *guest, _ string) (map[string]string, map[string]string) {
				pcr, sum := pcr16After(t, g.req)
				write := func(name, pcr, sum string) string {
					p := filepath.Join(g.work, name)
					os.WriteFile(p, []byte(`{"pcr_values":{"sha256":{"16":"`+pcr+`"}},"cvmd":{"manifest_sha3_256":"`+sum+`"}}`), 0o600)
					return p
				}
				good := write("policy.json", pcr, sum)
				other := write("other-policy.json", strings.Repeat("ab", 32), strings.Repeat("cd", 32))
				base := map[string]string{"AGENT_GRPC_ATTESTED_TLS": "true", "CVM_ATTESTATION_ALLOW_SIMULATED": "true"}
				ok, refused := map[string]string{"AGENT_GRPC_ATTESTATION_POLICY": good}, map[string]string{"AGENT_GRPC_ATTESTATION_POLICY": other}
				for k, v := range base {
					ok[k], refused[k] = v, v
				}
				return ok, refused
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest(t)
			caFile, certFile, keyFile := writeTLSFiles(t, g.work)
			g.req.AgentConfig = tc.config(certFile, keyFile)
			ok, refused := tc.env(t, g, caFile)
			srv := g.startManager(true)
			g.startCvmd()
			g.waitRunRes(srv)
			g.retryEnv(ok, "algo", g.algo, g.priv, "-a", "bin")
			if out, err := g.cvmEnv(nil, "data", g.data, g.priv); err == nil {
				t.Fatalf("a plaintext cvm was served by a %s ingress:\n%s", tc.name, out)
			}
			if refused != nil {
				out, err := g.cvmEnv(refused, "data", g.data, g.priv)
				if err == nil {
					t.Fatalf("cvm with a policy for another manifest was served:\n%s", out)
				}
				if !strings.Contains(out, "cvmd.manifest") && !strings.Contains(out, "vtpm.pcrs") {
					t.Fatalf("cvm refused for another reason than PCR 16 / the manifest:\n%s", out)
				}
			}
			g.retryEnv(ok, "data", g.data, g.priv)
			if r := g.resultEnv(ok); !strings.HasPrefix(r, "accuracy 0.9") {
				t.Fatalf("result.txt = %q", r)
			}
		})
	}
}
