package ingress_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/corim"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/cvm/cli"
	"github.com/cvmd/cvmd/proto/agentctl"
	"github.com/cvmd/cvmd/proto/config"
)

// testCA issues certificates for 127.0.0.1 (servers) and clients, as PEM files.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newCA(t *testing.T, dir, name string) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	f := filepath.Join(dir, name+".pem")
	os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return &testCA{cert: c, key: key, file: f}
}

func (ca *testCA) issue(t *testing.T, dir, name string, client bool) (certFile, keyFile string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

const cliAlgo = "#!/bin/sh\nmkdir -p results && cat datasets/in.csv > results/out.csv\n"

// TestCLIThroughIngress runs a whole computation with the cvm CLI through
// the ingress in every mode, into the real agent: algo, data, result.
func TestCLIThroughIngress(t *testing.T) {
	dir := t.TempDir()
	ca, users, strangers := newCA(t, dir, "server-ca"), newCA(t, dir, "client-ca"), newCA(t, dir, "other-ca")
	srvCert, srvKey := ca.issue(t, dir, "server", false)
	cliCert, cliKey := users.issue(t, dir, "user", true)
	badCert, badKey := strangers.issue(t, dir, "mallory", true)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{}`), 0o600)
	// A CoRIM (unsigned, as Cocos's CLI writes by default) pinning the simulated measurement.
	meas := sim.DefaultMeasurement()
	snpRef, err := corim.SNPTriple(corim.SNPValues{Measurements: [][]byte{meas[:]}})
	if err != nil {
		t.Fatal(err)
	}
	corimBytes, err := corim.Marshal(corim.New("snp", []corim.RefTriple{snpRef}, nil))
	if err != nil {
		t.Fatal(err)
	}
	corimPolicy := filepath.Join(dir, "policy.corim")
	os.WriteFile(corimPolicy, corimBytes, 0o600)
	a := simAttester(t)
	ev := func(_ context.Context, rd [64]byte, n [32]byte) ([]byte, error) {
		return a.Attest(attest.Request{ReportData: rd[:], Nonce: n[:], Platform: attest.SNPvTPM})
	}

	modes := []struct {
		name     string
		settings *config.IngressSettings
		env      map[string]string
		refused  map[string]string // env overrides → error text that must appear
	}{
		{"plaintext", &config.IngressSettings{}, nil, nil},
		{"TLS", &config.IngressSettings{CertFile: srvCert, KeyFile: srvKey},
			map[string]string{"AGENT_GRPC_SERVER_CA_CERTS": ca.file}, nil},
		{"mTLS", &config.IngressSettings{CertFile: srvCert, KeyFile: srvKey, ClientCaFile: users.file},
			map[string]string{"AGENT_GRPC_SERVER_CA_CERTS": ca.file, "AGENT_GRPC_CLIENT_CERT": cliCert, "AGENT_GRPC_CLIENT_KEY": cliKey},
			map[string]string{"AGENT_GRPC_CLIENT_CERT": badCert, "AGENT_GRPC_CLIENT_KEY": badKey}},
		{"aTLS", &config.IngressSettings{AttestedTls: true},
			map[string]string{"AGENT_GRPC_ATTESTED_TLS": "true", "AGENT_GRPC_ATTESTATION_POLICY": policy, "CVM_ATTESTATION_ALLOW_SIMULATED": "true"},
			map[string]string{"CVM_ATTESTATION_ALLOW_SIMULATED": "false"}},
		{"aTLS CoRIM", &config.IngressSettings{AttestedTls: true},
			map[string]string{"AGENT_GRPC_ATTESTED_TLS": "true", "AGENT_GRPC_ATTESTATION_POLICY": corimPolicy, "CVM_ATTESTATION_ALLOW_SIMULATED": "true",
				"CVM_ATTESTATION_ALLOW_UNSIGNED_CORIM": "true"},
			map[string]string{"CVM_ATTESTATION_ALLOW_UNSIGNED_CORIM": "false"}},
		{"maTLS", &config.IngressSettings{AttestedTls: true, CertFile: srvCert, KeyFile: srvKey, ClientCaFile: users.file},
			map[string]string{"AGENT_GRPC_ATTESTED_TLS": "true", "AGENT_GRPC_ATTESTATION_POLICY": policy, "CVM_ATTESTATION_ALLOW_SIMULATED": "true",
				"AGENT_GRPC_SERVER_CA_CERTS": ca.file, "AGENT_GRPC_CLIENT_CERT": cliCert, "AGENT_GRPC_CLIENT_KEY": cliKey},
			map[string]string{"AGENT_GRPC_SERVER_CA_CERTS": users.file}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			wd := t.TempDir()
			algoP := agenttest.NewParty(t, "ecdsa", wd)
			owner := agenttest.NewParty(t, "ed25519", wd)
			consumer := agenttest.NewParty(t, "rsa", wd)
			algo, data := filepath.Join(wd, "algo.sh"), filepath.Join(wd, "in.csv")
			os.WriteFile(algo, []byte(cliAlgo), 0o755)
			os.WriteFile(data, []byte("x,y\n1,2\n"), 0o644)
			h := agenttest.Start(t, agenttest.Options{})
			man := agenttest.NewManifest("cli-"+m.name, algoP, agenttest.HashFile(t, algo), "bin",
				[]agenttest.DatasetSpec{{Filename: "in.csv", Hash: agenttest.HashFile(t, data), Owner: owner}}, consumer)
			if res, err := h.Control.Start(context.Background(), man.RunReq(nil)); err != nil || res.GetError() != "" {
				t.Fatalf("start: %v %q", err, res.GetError())
			}
			cfg, err := ingress.ConfigFromSettings(m.settings, ev)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Backend = h.Dial
			addr := startIngress(t, *cfg)
			env := map[string]string{"AGENT_GRPC_URL": addr, "AGENT_GRPC_TIMEOUT": "10s"}
			for k, v := range m.env {
				env[k] = v
			}
			cvm := func(over map[string]string, args ...string) (int, string) {
				var out, errb bytes.Buffer
				e := map[string]string{}
				for k, v := range env {
					e[k] = v
				}
				for k, v := range over {
					e[k] = v
				}
				code := cli.Run(context.Background(), args, cli.Options{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return e[k] }})
				return code, errb.String()
			}
			if m.refused != nil {
				m.refused["AGENT_GRPC_TIMEOUT"] = "2s"
				code, stderr := cvm(m.refused, "algo", algo, algoP.KeyFile)
				if code == 0 {
					t.Fatal("cvm connected with the refused setting")
				}
				t.Logf("refused as expected: %s", strings.TrimSpace(stderr))
			}
			if code, stderr := cvm(nil, "algo", algo, algoP.KeyFile); code != 0 {
				t.Fatalf("cvm algo: %d %s", code, stderr)
			}
			if code, stderr := cvm(nil, "data", data, owner.KeyFile); code != 0 {
				t.Fatalf("cvm data: %d %s", code, stderr)
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				st, err := h.Control.State(context.Background(), &agentctl.StateRequest{})
				if err == nil && st.GetState() == "ConsumingResults" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("state %v %v", st, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			out := filepath.Join(wd, "out")
			if code, stderr := cvm(nil, "result", consumer.KeyFile, "-o", out); code != 0 {
				t.Fatalf("cvm result: %d %s", code, stderr)
			}
			zr, err := zip.OpenReader(filepath.Join(out, "results.zip"))
			if err != nil {
				t.Fatal(err)
			}
			defer zr.Close()
			f, err := zr.Open("out.csv")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(f)
			if string(b) != "x,y\n1,2\n" {
				t.Fatalf("result %q", b)
			}
		})
	}
}
