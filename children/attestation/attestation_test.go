//go:build !nosim

package attestation

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/hcl"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	pb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/config"
)

// serve runs s behind a real edge and returns a client. Tests using the
// simulator are not parallel: it is process-global.
func serve(t testing.TB, s *Service) pb.AttestationClient {
	t.Helper()
	return pb.NewAttestationClient(serveConn(t, s))
}

// serveConn is serve's connection.
func serveConn(t testing.TB, s *Service) *grpc.ClientConn {
	t.Helper()
	ln := ipc.NewListener("attestation")
	cli, srv, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "from:agent")
	if err != nil {
		t.Fatal(err)
	}
	ln.Add(srv)
	d := ipc.NewDialer("attestation", cli)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, ln, nil) }()
	conn, err := ipc.GRPCClient(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		ln.Close()
		d.Close()
	})
	return conn
}

func simulated(t testing.TB, dir string) *Service {
	t.Helper()
	s, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateSnp: true}, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func measure(t testing.TB, s *Service, boot string, seq uint64, typ string, v any) *pb.MeasureReply {
	t.Helper()
	e, err := attest.JSONEvent(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Measure(&pb.MeasureRequest{BootId: boot, Seq: seq, Type: typ, Data: e.Data})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestServiceEndToEnd(t *testing.T) {
	dir := t.TempDir()
	s := simulated(t, dir)
	table := sha256.Sum256([]byte("table"))
	tableHex := hex.EncodeToString(table[:])
	measure(t, s, "b1", 1, attest.EventChildTable, attest.ChildTable{SHA256: tableHex})
	r1 := measure(t, s, "b1", 2, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 1})
	// A resend of seq 2 (the supervisor retrying after a restart) is not applied twice.
	r2 := measure(t, s, "b1", 2, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 1})
	if r1.GetEvents() != 3 || r2.GetEvents() != 3 || string(r1.GetPcrSha256()) != string(r2.GetPcrSha256()) {
		t.Fatalf("duplicate applied: %v %v", r1, r2)
	}
	c := serve(t, s)
	ctx := context.Background()
	if _, err := c.ExtendManifest(ctx, &pb.ExtendManifestRequest{ManifestJson: []byte(`{"id":"c1"}`)}); err != nil {
		t.Fatal(err)
	}
	tee, nonce := []byte("tee nonce"), []byte("vtpm nonce")
	for _, p := range []attest.Platform{attest.SNP, attest.VTPM, attest.SNPvTPM} {
		res, err := c.Evidence(ctx, &pb.EvidenceRequest{ReportData: tee, Nonce: nonce, PlatformType: int32(p)})
		if err != nil {
			t.Fatal(err)
		}
		if res.GetPlatform() != "simulated "+p.String() {
			t.Fatalf("platform %q", res.GetPlatform())
		}
		akSum := sha256.Sum256(s.tpm.AKPub())
		o := verify.Options{ReportData: tee, Nonce: nonce, AllowSimulated: true, Policy: &verify.Policy{CVMD: verify.CVMDPolicy{
			TrustedAKSHA256: []string{hex.EncodeToString(akSum[:])},
		}}}
		if p != attest.SNP {
			o.Policy.CVMD.ChildTableSHA256 = tableHex
			m := attest.ManifestEvent([]byte(`{"id":"c1"}`))
			o.Policy.CVMD.ManifestSHA3256 = hex.EncodeToString(m.Data[:32])
		}
		r, err := verify.Token(res.GetEatToken(), o)
		if err != nil {
			t.Fatalf("%v: %v", p, err)
		}
		if p != attest.SNP && (len(r.Events) != 4 || r.Events[0].Type != attest.EventPlatform) {
			t.Fatalf("%v: events %+v", p, r.Events)
		}
	}
	for _, tc := range []struct {
		req  *pb.EvidenceRequest
		code codes.Code
	}{
		{&pb.EvidenceRequest{Nonce: make([]byte, 33), PlatformType: 1}, codes.InvalidArgument},
		{&pb.EvidenceRequest{ReportData: make([]byte, 65), PlatformType: 0}, codes.InvalidArgument},
		{&pb.EvidenceRequest{PlatformType: 3}, codes.Unimplemented},
		{&pb.EvidenceRequest{PlatformType: 4}, codes.Unimplemented},
		{&pb.EvidenceRequest{PlatformType: 9}, codes.InvalidArgument},
	} {
		if _, err := c.Evidence(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("%v: %v, want %v", tc.req, err, tc.code)
		}
	}
}

// TestRestartKeepsLog: a restarted attestation child (same state dir) keeps
// its log, and with the simulator replays it so tokens still verify.
func TestRestartKeepsLog(t *testing.T) {
	dir := t.TempDir()
	s := simulated(t, dir)
	measure(t, s, "b1", 1, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 1})
	before := s.store.snapshot()
	s.Close()
	// A torn record at the end (crash mid-append) is cut off.
	f, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0, 0, 0, 40, 1, 2})
	f.Close()

	s2 := simulated(t, dir)
	if got := s2.store.snapshot(); len(got) != len(before) {
		t.Fatalf("log after restart has %d events, want %d", len(got), len(before))
	}
	// The resend after restart is recognised as applied.
	if r := measure(t, s2, "b1", 1, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 1}); r.GetEvents() != uint64(len(before)) {
		t.Fatalf("resend applied again: %d events", r.GetEvents())
	}
	measure(t, s2, "b1", 2, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 2})
	tok, err := s2.att.Attest(attest.Request{Nonce: []byte("n0nce123"), Platform: attest.SNPvTPM})
	if err != nil {
		t.Fatal(err)
	}
	r, err := verify.Token(tok, verify.Options{Nonce: []byte("n0nce123"), AllowSimulated: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Restarts["agent"] != 2 {
		t.Fatalf("restarts %v", r.Restarts)
	}
}

// TestRecoverHardware drives the hardware start-up rules with the simulator
// standing in as a TPM whose PCRs survive the child.
func TestRecoverHardware(t *testing.T) {
	rw, err := sim.OpenTPM()
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	tpm, err := attest.NewTPM(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ev := func(gen uint32) attest.Event {
		e, _ := attest.JSONEvent(attest.EventChildStart, attest.ChildStart{Child: "x", Generation: gen})
		return e
	}
	dir := t.TempDir()
	st, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()

	// Fresh PCRs and a log from a previous boot: set aside.
	st.append(ev(1))
	if _, err := recoverLog(st, tpm, false); err != nil || len(st.snapshot()) != 0 {
		t.Fatalf("previous boot's log: %v, %d events", err, len(st.snapshot()))
	}
	if _, err := os.Stat(filepath.Join(dir, LogFile+".prev")); err != nil {
		t.Fatal(err)
	}
	// Consistent: nothing to do.
	for g := uint32(1); g <= 2; g++ {
		st.append(ev(g))
		tpm.Extend(ev(g))
	}
	if n, err := recoverLog(st, tpm, false); err != nil || n != 0 {
		t.Fatalf("consistent log: %d, %v", n, err)
	}
	// Logged but not extended (crash in between): extended now.
	st.append(ev(3))
	if n, err := recoverLog(st, tpm, false); err != nil || n != 1 {
		t.Fatalf("torn extend: %d, %v", n, err)
	}
	if n, err := recoverLog(st, tpm, false); err != nil || n != 0 {
		t.Fatalf("after repair: %d, %v", n, err)
	}
	// Extended but never logged: refused.
	tpm.Extend(ev(9))
	if _, err := recoverLog(st, tpm, false); !errors.Is(err, errLogMismatch) {
		t.Fatalf("unlogged extension: %v", err)
	}
}

// TestBenchAttest measures request → token (simulator, over the edge and
// gRPC) and token → verdict.
func TestBenchAttest(t *testing.T) {
	testutil.BenchOn(t)
	s := simulated(t, t.TempDir())
	c := serve(t, s)
	ctx := context.Background()
	for _, p := range []attest.Platform{attest.VTPM, attest.SNPvTPM} {
		const n = 50
		var tok []byte
		// One untimed request: connection set-up and the simulated SNP chain.
		if _, err := c.Evidence(ctx, &pb.EvidenceRequest{ReportData: []byte("tee"), Nonce: []byte("warm"), PlatformType: int32(attest.SNPvTPM)}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			res, err := c.Evidence(ctx, &pb.EvidenceRequest{ReportData: []byte("tee"), Nonce: []byte(fmt.Sprint(i)), PlatformType: int32(p)})
			if err != nil {
				t.Fatal(err)
			}
			tok = res.GetEatToken()
		}
		attestMS := float64(time.Since(start).Microseconds()) / 1000 / n
		akSum := sha256.Sum256(s.tpm.AKPub())
		o := verify.Options{AllowSimulated: true, Policy: &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{hex.EncodeToString(akSum[:])}}}}
		start = time.Now()
		for i := 0; i < n; i++ {
			if _, err := verify.Token(tok, o); err != nil {
				t.Fatal(err)
			}
		}
		verifyMS := float64(time.Since(start).Microseconds()) / 1000 / n
		suffix := map[attest.Platform]string{attest.VTPM: "vtpm", attest.SNPvTPM: "snp_vtpm"}[p]
		testutil.Bench("attest_ms_"+suffix, attestMS, "ms")
		testutil.Bench("verify_ms_"+suffix, verifyMS, "ms")
		if p == attest.SNPvTPM {
			testutil.Bench("attest_ms", attestMS, "ms")
			testutil.Bench("verify_ms", verifyMS, "ms")
			testutil.Bench("eat_token_bytes", float64(len(tok)), "bytes")
		}
	}
	// The same vTPM path against swtpm (libtpms), the vTPM the VM image uses.
	if _, err := exec.LookPath("swtpm"); err != nil {
		return
	}
	hw, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_HARDWARE, TpmPath: swtpm(t)}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer hw.Close()
	const n = 50
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := hw.att.Attest(attest.Request{Nonce: []byte(fmt.Sprint(i)), Platform: attest.VTPM}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Bench("attest_ms_swtpm_vtpm", float64(time.Since(start).Microseconds())/1000/n, "ms")
}

// TestConcurrentEvidenceAndMeasure: tokens requested while the supervisor
// measures still verify (the log in each token matches its quote).
func TestConcurrentEvidenceAndMeasure(t *testing.T) {
	s := simulated(t, t.TempDir())
	c := serve(t, s)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 4 {
		wg.Go(func() {
			for i := range 5 {
				n := []byte(fmt.Sprintf("nonce-%d-%d", g, i))
				res, err := c.Evidence(context.Background(), &pb.EvidenceRequest{ReportData: n, Nonce: n, PlatformType: int32(attest.SNPvTPM)})
				if err != nil {
					errs <- err
					return
				}
				if _, err := verify.Token(res.GetEatToken(), verify.Options{ReportData: n, Nonce: n, AllowSimulated: true}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range 10 {
		e, _ := attest.JSONEvent(attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: uint32(i + 2)})
		if _, err := s.Measure(&pb.MeasureRequest{BootId: "b", Seq: uint64(i + 1), Type: e.Type, Data: e.Data}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func FuzzOpenStore(f *testing.F) {
	dir := f.TempDir()
	st, err := openStore(dir)
	if err != nil {
		f.Fatal(err)
	}
	e, _ := attest.JSONEvent(attest.EventChildStart, attest.ChildStart{Child: "x", Generation: 2})
	st.append(e)
	st.append(attest.ManifestEvent([]byte("m")))
	st.close()
	b, _ := os.ReadFile(filepath.Join(dir, LogFile))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, LogFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := openStore(d)
		if err != nil {
			return
		}
		n := len(st.snapshot())
		st.close()
		// Whatever was kept must load again unchanged (the torn tail is cut once).
		st2, err := openStore(d)
		if err != nil || len(st2.snapshot()) != n {
			t.Fatalf("reload: %v, %d events, want %d", err, len(st2.snapshot()), n)
		}
		st2.close()
	})
}

// swtpm starts a software TPM (libtpms, not the simulator this package
// otherwise uses) on a UnixIO socket; its PCRs outlive our connections, as a
// vTPM's outlive the attestation child. The test listens on the socket and
// hands it to swtpm, so it is there before swtpm starts: nothing to wait for.
func swtpm(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm not installed (apt-get install swtpm)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "tpm.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	lf, err := ln.(*net.UnixListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,fd=3", "--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear")
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return sock
}

// TestHardwareModeSWTPM runs the HARDWARE path against swtpm: evidence that
// is not simulated verifies without AllowSimulated, and a restarted child
// recovers its log against PCRs that kept their values.
func TestHardwareModeSWTPM(t *testing.T) {
	sock := swtpm(t)
	dir := t.TempDir()
	st := &config.AttestationSettings{Mode: config.AttestationSettings_HARDWARE, TpmPath: sock}
	s, err := New(st, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.simulated {
		t.Fatal("swtpm counted as simulated")
	}
	table := sha256.Sum256([]byte("table"))
	measure(t, s, "boot", 1, attest.EventChildTable, attest.ChildTable{SHA256: hex.EncodeToString(table[:])})
	measure(t, s, "boot", 2, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 2})
	ak := sha256.Sum256(s.tpm.AKPub())
	pol := &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{hex.EncodeToString(ak[:])}, ChildTableSHA256: hex.EncodeToString(table[:])}}
	check := func(s *Service, wantEvents int) {
		t.Helper()
		n := random32(t)
		tok, err := s.att.Attest(attest.Request{Nonce: n, Platform: attest.VTPM})
		if err != nil {
			t.Fatal(err)
		}
		r, err := verify.Token(tok, verify.Options{Nonce: n, Policy: pol}) // no AllowSimulated
		if err != nil {
			t.Fatal(err)
		}
		if r.Simulated || len(r.Events) != wantEvents {
			t.Fatalf("simulated %v, %d events, want %d", r.Simulated, len(r.Events), wantEvents)
		}
		if _, err := s.att.Attest(attest.Request{Nonce: n, Platform: attest.SNPvTPM}); !errors.Is(err, attest.ErrUnsupportedPlatform) {
			t.Fatalf("SNP-vTPM without SNP: %v", err)
		}
	}
	check(s, 3)
	s.Close()
	// The child restarts: same TPM (same AK, PCRs kept), same state dir.
	s2, err := New(st, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check(s2, 3)
	measure(t, s2, "boot", 3, attest.EventChildStart, attest.ChildStart{Child: "attestation", Generation: 2})
	check(s2, 4)
}

func random32(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBootEvent: the supervisor's boot event names the boot in every token;
// without a TPM it is still kept (with the other events, extended nowhere),
// so SNP tokens name it too.
func TestBootEvent(t *testing.T) {
	s := simulated(t, t.TempDir())
	measure(t, s, "b1", 1, attest.EventBoot, attest.Boot{BootID: "b1"})
	nonce := random32(t)
	tok, err := s.att.Attest(attest.Request{Nonce: nonce, Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	akSum := sha256.Sum256(s.tpm.AKPub())
	r, err := verify.Token(tok, verify.Options{Nonce: nonce, AllowSimulated: true, BootID: "b1",
		Policy: &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{hex.EncodeToString(akSum[:])}}}})
	if err != nil || r.BootID != "b1" {
		t.Fatalf("boot id %q: %v", r.BootID, err)
	}

	// No TPM: an SNP-only service.
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	snp, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := &Service{att: &attest.Attester{SNP: snp, Simulated: true, Log: st.snapshot}, store: st, quit: make(chan struct{})}
	defer ns.Close()
	measure(t, ns, "b2", 1, attest.EventBoot, attest.Boot{BootID: "b2"})
	e, _ := attest.JSONEvent(attest.EventChildTable, attest.ChildTable{SHA256: strings.Repeat("00", 32)})
	// Kept in the log, extended nowhere: acknowledged, or the supervisor
	// would resend it forever.
	if r, err := ns.Measure(&pb.MeasureRequest{BootId: "b2", Seq: 2, Type: e.Type, Data: e.Data}); err != nil || len(r.GetPcrSha256()) != 0 || r.GetEvents() != 2 {
		t.Fatalf("child-table event without a TPM: %v, %v; want acknowledged, 2 events, no PCR value", r, err)
	}
	stok, err := ns.att.Attest(attest.Request{ReportData: []byte("tee"), Platform: attest.SNP})
	if err != nil {
		t.Fatal(err)
	}
	r, err = verify.Token(stok, verify.Options{ReportData: []byte("tee"), AllowSimulated: true, BootID: "b2"})
	if err != nil || r.BootID != "b2" {
		t.Fatalf("SNP boot id %q: %v", r.BootID, err)
	}
}

// TestSimulatedTDX: the child's SIMULATED TDX answers Cocos's type 4 with a
// token that verifies through the TDX path and says it is simulated.
func TestSimulatedTDX(t *testing.T) {
	s, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateTdx: true}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := serve(t, s)
	tee, nonce := []byte("tee nonce"), []byte("vtpm nonce")
	res, err := c.Evidence(context.Background(), &pb.EvidenceRequest{ReportData: tee, Nonce: nonce, PlatformType: int32(attest.TDX)})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetPlatform() != "simulated TDX" {
		t.Fatalf("platform %q", res.GetPlatform())
	}
	if _, err := verify.Token(res.GetEatToken(), verify.Options{ReportData: tee, Nonce: nonce}); verify.CheckName(err) != "simulated" {
		t.Fatalf("without AllowSimulated: %v", err)
	}
	r, err := verify.Token(res.GetEatToken(), verify.Options{ReportData: tee, Nonce: nonce, AllowSimulated: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.TDX == nil || !r.Simulated {
		t.Fatalf("result %+v", r)
	}
	if _, err := c.Evidence(context.Background(), &pb.EvidenceRequest{ReportData: tee, PlatformType: int32(attest.SNP)}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("SNP on a TDX VM: %v", err)
	}
	if _, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateTdx: true, SimulateSnp: true}, t.TempDir()); err == nil {
		t.Fatal("SNP and TDX at once accepted")
	}
}

// TestSimulatedAzure: with simulate_azure the child answers Cocos's type 3
// from the HCL report in its simulated vTPM.
func TestSimulatedAzure(t *testing.T) {
	for _, tee := range []string{"snp", "tdx"} {
		t.Run(tee, func(t *testing.T) {
			s, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateAzure: tee}, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c := serve(t, s)
			tee, nonce := []byte("tee nonce"), random32(t)
			res, err := c.Evidence(context.Background(), &pb.EvidenceRequest{ReportData: tee, Nonce: nonce, PlatformType: int32(attest.Azure)})
			if err != nil {
				t.Fatal(err)
			}
			r, err := verify.Token(res.GetEatToken(), verify.Options{ReportData: tee, Nonce: nonce, AllowSimulated: true})
			if err != nil {
				t.Fatal(err)
			}
			if r.Platform != attest.Azure || !r.Simulated || len(r.Events) == 0 {
				t.Fatalf("result %+v", r)
			}
		})
	}
	if _, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateAzure: "sgx"}, t.TempDir()); err == nil {
		t.Fatal("simulate_azure sgx accepted")
	}
}

// TestBenchAttestTDXAzure measures request → token and token → verdict for
// the simulated TDX and Azure (SEV-SNP) platforms, each interleaved with the
// same for SNP-vTPM's verification as the reference.
func TestBenchAttestTDXAzure(t *testing.T) {
	testutil.BenchOn(t)
	for _, tc := range []struct {
		name string
		st   *config.AttestationSettings
		p    attest.Platform
	}{
		{"tdx", &config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateTdx: true}, attest.TDX},
		{"azure", &config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateAzure: "snp"}, attest.Azure},
	} {
		func() {
			s, err := New(tc.st, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c := serve(t, s)
			ctx := context.Background()
			req := func(i int) []byte {
				res, err := c.Evidence(ctx, &pb.EvidenceRequest{ReportData: []byte("tee"), Nonce: []byte(fmt.Sprint("n", i)), PlatformType: int32(tc.p)})
				if err != nil {
					t.Fatal(err)
				}
				return res.GetEatToken()
			}
			req(-1) // untimed: connection set-up, the token key's quote
			const n = 30
			var tok []byte
			start := time.Now()
			for i := 0; i < n; i++ {
				tok = req(i)
			}
			attestMS := float64(time.Since(start).Microseconds()) / 1000 / n
			o := verify.Options{AllowSimulated: true}
			start = time.Now()
			for i := 0; i < n; i++ {
				if _, err := verify.Token(tok, o); err != nil {
					t.Fatal(err)
				}
			}
			verifyMS := float64(time.Since(start).Microseconds()) / 1000 / n
			testutil.Bench("attest_ms_"+tc.name, attestMS, "ms")
			testutil.Bench("verify_ms_"+tc.name, verifyMS, "ms")
			testutil.Bench("eat_token_bytes_"+tc.name, float64(len(tok)), "bytes")
		}()
	}
}

// An Azure token's evidence (simulated Azure TDX): the HCL report is
// refreshed with user data SHA-256(nonce), its runtime claims carry it, and
// the quote's REPORTDATA is SHA-256 of those claims; each nonce its own.
// The Azure evidence made after a refresh still verifies. Other platforms
// refuse as Unimplemented, a nonce over 32 bytes as InvalidArgument.
func TestAzureTokenEvidence(t *testing.T) {
	s, err := New(&config.AttestationSettings{Mode: config.AttestationSettings_SIMULATED, SimulateAzure: "tdx"}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := serve(t, s)
	ctx := context.Background()
	// SHA-256 of the nonce zero-padded to 32 bytes, then 32 zero bytes (Cocos).
	want := func(nonce []byte) string {
		padded := make([]byte, 32)
		copy(padded, nonce)
		h := sha256.Sum256(padded)
		return hex.EncodeToString(append(h[:], make([]byte, 32)...))
	}
	seen := map[string]bool{}
	for _, nonce := range [][]byte{random32(t), []byte("short nonce")} {
		res, err := c.AzureTokenEvidence(ctx, &pb.AzureTokenEvidenceRequest{Nonce: nonce})
		if err != nil {
			t.Fatal(err)
		}
		var claims struct {
			UserData string `json:"user-data"`
		}
		if err := json.Unmarshal(res.GetRuntimeClaims(), &claims); err != nil {
			t.Fatalf("runtime claims: %v", err)
		}
		if claims.UserData != want(nonce) {
			t.Fatalf("user-data %s, want %s", claims.UserData, want(nonce))
		}
		q, err := attest.ParseTDXQuote(res.GetQuote())
		if err != nil {
			t.Fatal(err)
		}
		ch := sha256.Sum256(res.GetRuntimeClaims())
		if rd := q.GetTdQuoteBody().GetReportData(); !bytes.Equal(rd[:32], ch[:]) {
			t.Fatalf("quote REPORTDATA %x, want SHA-256 of the claims %x", rd[:32], ch)
		}
		// The user data went the way Azure's HCL takes it: its NV index.
		if ud, err := s.tpm.ReadNV(hcl.UserDataNVIndex); err != nil || hex.EncodeToString(ud) != want(nonce) {
			t.Fatalf("NV %#x holds %x (%v), want the user data", hcl.UserDataNVIndex, ud, err)
		}
		seen[claims.UserData] = true
	}
	if len(seen) != 2 {
		t.Fatal("two nonces gave the same user data")
	}
	tee, vn := []byte("tee nonce"), random32(t)
	ev, err := c.Evidence(ctx, &pb.EvidenceRequest{ReportData: tee, Nonce: vn, PlatformType: int32(attest.Azure)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Token(ev.GetEatToken(), verify.Options{ReportData: tee, Nonce: vn, AllowSimulated: true}); err != nil {
		t.Fatalf("Azure evidence after a refresh: %v", err)
	}
	if _, err := c.AzureTokenEvidence(ctx, &pb.AzureTokenEvidenceRequest{Nonce: make([]byte, 33)}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("33-byte nonce: %v, want InvalidArgument", err)
	}
	for name, st := range map[string]*config.AttestationSettings{
		"azure-snp": {Mode: config.AttestationSettings_SIMULATED, SimulateAzure: "snp"},
		"snp":       {Mode: config.AttestationSettings_SIMULATED, SimulateSnp: true},
	} {
		t.Run(name, func(t *testing.T) {
			s.Close() // one TPM simulator per process
			o, err := New(st, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			reason := map[string]string{"azure-snp": "Azure SEV-SNP", "snp": "not an Azure confidential VM"}[name]
			if _, err := serve(t, o).AzureTokenEvidence(ctx, &pb.AzureTokenEvidenceRequest{Nonce: []byte("n")}); status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), reason) {
				t.Fatalf("%v: %v, want Unimplemented saying %q", st, err, reason)
			}
		})
	}
}
