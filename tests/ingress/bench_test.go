// Package ingress_test measures the ingress with the real agent behind it.
package ingress_test

import (
	"context"
	"crypto/rand"
	"crypto/sha3"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/atls"
	"github.com/cvmd/cvmd/attest/atlsverify"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/children/ingress"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/proto/agent"
)

const chunk = 1 << 20 // what the Cocos CLI and cvm send

// totalSize is 1 GiB; CVMD_BENCH_UPLOAD_MIB overrides it when iterating.
var totalSize = func() int {
	var mib int
	if _, err := fmt.Sscan(os.Getenv("CVMD_BENCH_UPLOAD_MIB"), &mib); err == nil && mib > 0 {
		return mib << 20
	}
	return 1 << 30
}()

// simAttester is the simulated SNP+vTPM platform (TPM simulator and
// go-sev-guest's test signer) through attest's real evidence code.
func simAttester(t *testing.T) *attest.Attester {
	s, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	tp, err := attest.NewTPM(rw)
	if err != nil {
		rw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close(); rw.Close() })
	return &attest.Attester{TPM: tp, SNP: s, Simulated: true}
}

func simEvidence(a *attest.Attester) atls.EvidenceFunc {
	return func(_ context.Context, rd [64]byte, n [32]byte) ([]byte, error) {
		return a.Attest(attest.Request{ReportData: rd[:], Nonce: n[:], Platform: attest.SNPvTPM})
	}
}

// startIngress serves cfg on loopback until the test ends.
func startIngress(t *testing.T, cfg ingress.Config) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ingress.New(cfg).Run(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// pattern is 1 MiB of random bytes; the dataset is it repeated.
func pattern() []byte {
	b := make([]byte, chunk)
	rand.Read(b)
	return b
}

// referenceSHA3 hashes the 1 GiB dataset on one core: the rate the agent's
// upload path is compared with, and the manifest hash.
func referenceSHA3(p []byte) ([32]byte, float64) {
	h := sha3.New256()
	start := time.Now()
	for range totalSize / chunk {
		h.Write(p)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, float64(totalSize) / (1 << 20) / time.Since(start).Seconds()
}

// uploadThroughIngress starts a real agent with a computation expecting the
// 1 GiB dataset, puts the ingress in front of it and times the Data upload.
func uploadThroughIngress(t *testing.T, p []byte, sum [32]byte, tlsCfg *tls.Config, atlsCfg *atls.ServerConfig, creds grpc.DialOption) float64 {
	return upload(t, p, sum, func(h *agenttest.Harness) string {
		return startIngress(t, ingress.Config{TLS: tlsCfg, ATLS: atlsCfg, Backend: h.Dial})
	}, creds)
}

// upload runs one measured upload; addrOf returns the address to dial, or
// "" to dial the agent's edge directly (no ingress, plaintext).
func upload(t *testing.T, p []byte, sum [32]byte, addrOf func(*agenttest.Harness) string, creds grpc.DialOption) float64 {
	dir := t.TempDir()
	algoP := agenttest.NewParty(t, "ecdsa", dir)
	owner := agenttest.NewParty(t, "ecdsa", dir)
	algo := []byte("#!/bin/sh\nexit 0\n")
	algoPath := filepath.Join(dir, "algo.sh")
	os.WriteFile(algoPath, algo, 0o755)
	h := agenttest.Start(t, agenttest.Options{})
	m := agenttest.NewManifest("bench", algoP, agenttest.HashFile(t, algoPath), "bin",
		[]agenttest.DatasetSpec{{Filename: "big.bin", Hash: sum, Owner: owner}})
	if res, err := h.Control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
		t.Fatalf("starting computation: %v %q", err, res.GetError())
	}
	opts := []grpc.DialOption{creds}
	addr := addrOf(h)
	if addr == "" {
		addr = "passthrough:///agent"
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return h.Dial(ctx) }))
	}
	cc, err := grpc.NewClient(addr, append(opts,
		grpc.WithInitialWindowSize(8<<20), grpc.WithInitialConnWindowSize(16<<20),
		grpc.WithWriteBufferSize(1<<20), grpc.WithReadBufferSize(1<<20))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := agent.NewAgentServiceClient(cc)
	ctx := context.Background()
	actx := metadata.NewOutgoingContext(ctx, metadata.Pairs("user-id", "algorithm-provider", "signature", algoP.Sig(t, "algorithm-provider"), "algo_type", "bin"))
	as, err := c.Algo(actx)
	if err != nil {
		t.Fatal(err)
	}
	if err := as.Send(&agent.AlgoRequest{Algorithm: algo}); err != nil {
		t.Fatal(err)
	}
	if _, err := as.CloseAndRecv(); err != nil {
		t.Fatalf("algo upload: %v", err)
	}
	dctx := metadata.NewOutgoingContext(ctx, metadata.Pairs("user-id", "data-provider", "signature", owner.Sig(t, "data-provider"), "decompress", "false"))
	cpu0 := cpuTime()
	start := time.Now()
	ds, err := c.Data(dctx)
	if err != nil {
		t.Fatal(err)
	}
	for range totalSize / chunk {
		if err := ds.Send(&agent.DataRequest{Dataset: p, Filename: "big.bin"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ds.CloseAndRecv(); err != nil {
		t.Fatalf("data upload: %v", err)
	}
	el := time.Since(start)
	lastCPU = (cpuTime() - cpu0).Seconds() / (float64(totalSize) / (1 << 30))
	return float64(totalSize) / (1 << 20) / el.Seconds()
}

// lastCPU is the process CPU time (client, ingress and agent together) per
// GiB of the last upload: unlike wall-clock rates it hardly depends on what
// else the machine runs, so differences between modes are the modes' costs.
var lastCPU float64

func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestBenchIngressUpload: tls_upload_mib_s and atls_upload_mib_s, 1 GiB
// through the ingress into the real agent (Data RPC, SHA3-256, disk) over an
// ipc edge, all on this machine's cores; sha3_256_mib_s is one core hashing
// the same bytes in the same run.
func TestBenchIngressUpload(t *testing.T) {
	testutil.BenchOn(t)
	p := pattern()
	c0 := cpuTime()
	sum, ref := referenceSHA3(p)
	testutil.Bench("ingress_ref_sha3_256_mib_s", ref, "MiB/s", fmt.Sprintf("%d MiB", totalSize>>20))
	testutil.Bench("ingress_ref_sha3_256_cpu_s_per_gib", (cpuTime()-c0).Seconds()/(float64(totalSize)/(1<<30)), "s")
	direct := upload(t, p, sum, func(*agenttest.Harness) string { return "" }, grpc.WithTransportCredentials(insecure.NewCredentials()))
	testutil.Bench("ingress_ref_agent_direct_upload_mib_s", direct, "MiB/s", "no ingress, no TLS: the agent alone")
	testutil.Bench("ingress_ref_agent_direct_upload_cpu_s_per_gib", lastCPU, "s", "client and agent CPU time per GiB")
	id, err := atls.NewEphemeralIdentity()
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id}, NextProtos: []string{"h2"}}
	tlsRate := uploadThroughIngress(t, p, sum, tlsCfg, nil,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	testutil.Bench("tls_upload_mib_s", tlsRate, "MiB/s", fmt.Sprintf("%.0f%% of one core's SHA3-256", 100*tlsRate/ref))
	testutil.Bench("tls_upload_cpu_s_per_gib", lastCPU, "s", "client, ingress and agent CPU time per GiB")

	a := simAttester(t)
	atlsRate := uploadThroughIngress(t, p, sum, atls.ServerTLSConfig(id), &atls.ServerConfig{Identity: id, Evidence: simEvidence(a)},
		grpc.WithTransportCredentials(atls.NewCredentials(&atls.ClientConfig{VerifyEvidence: atlsverify.Policy(verify.Options{AllowSimulated: true})})))
	testutil.Bench("atls_upload_mib_s", atlsRate, "MiB/s", fmt.Sprintf("%.0f%% of one core's SHA3-256", 100*atlsRate/ref))
	testutil.Bench("atls_upload_cpu_s_per_gib", lastCPU, "s", "client, ingress and agent CPU time per GiB")
}

// TestBenchIngressHandshake: tls_handshake_ms and atls_handshake_ms (p50 of
// 40): TCP connect to the ingress, TLS 1.3, and for aTLS the authenticator
// exchange with simulated SNP+vTPM evidence fetched per connection and
// verified by attest/verify, as cvm does.
func TestBenchIngressHandshake(t *testing.T) {
	testutil.BenchOn(t)
	h := agenttest.Start(t, agenttest.Options{})
	id, _ := atls.NewEphemeralIdentity()
	a := simAttester(t)
	tlsAddr := startIngress(t, ingress.Config{TLS: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id}, NextProtos: []string{"h2"}}, Backend: h.Dial})
	atlsAddr := startIngress(t, ingress.Config{TLS: atls.ServerTLSConfig(id), ATLS: &atls.ServerConfig{Identity: id, Evidence: simEvidence(a)}, Backend: h.Dial})
	acfg := &atls.ClientConfig{VerifyEvidence: atlsverify.Policy(verify.Options{AllowSimulated: true})}
	measure := func(name, addr string, hs func(net.Conn) error) {
		var ds []time.Duration
		for range 40 {
			start := time.Now()
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := hs(raw); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ds = append(ds, time.Since(start))
			raw.Close()
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		testutil.Bench(name, float64(ds[len(ds)/2].Microseconds())/1000, "ms", fmt.Sprintf("p50 of %d; p90 %.2f", len(ds), float64(ds[len(ds)*9/10].Microseconds())/1000))
	}
	measure("tls_handshake_ms", tlsAddr, func(raw net.Conn) error {
		return tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}).Handshake()
	})
	measure("atls_handshake_ms", atlsAddr, func(raw net.Conn) error {
		_, _, err := atls.Client(context.Background(), raw, "", acfg)
		return err
	})
}
