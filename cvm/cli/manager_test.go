package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestManagerCommand(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pub := filepath.Join(dir, "public.pem")
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	algo := filepath.Join(dir, "algo")
	os.WriteFile(algo, []byte("#!/bin/sh\n"), 0o755)
	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantCode int
		wantErr  string
	}{
		{"serves and quits on stdin", []string{"manager", "--listen", "127.0.0.1:0", "--algo", algo, "--public-key", pub, "--dataset", algo}, "state\nquit\n", 0, "no guest connected"},
		{"missing manifest file", []string{"manager", "--listen", "127.0.0.1:0", "--manifest", filepath.Join(dir, "none.json")}, "quit\n", 1, "reading manifest"},
		{"invalid manifest", []string{"manager", "--listen", "127.0.0.1:0", "--manifest", pub}, "quit\n", 1, "manifest"},
		{"algorithm without key", []string{"manager", "--listen", "127.0.0.1:0", "--algo", algo}, "quit\n", 1, "no public key"},
		{"unknown command on stdin is reported", []string{"manager", "--listen", "127.0.0.1:0"}, "dance\nquit\n", 0, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Run(context.Background(), tc.args, Options{Stdin: strings.NewReader(tc.stdin), Stdout: &out, Stderr: &errb})
			if code != tc.wantCode || !strings.Contains(errb.String(), tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errb.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}
