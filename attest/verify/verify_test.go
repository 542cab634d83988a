package verify_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/proto/check"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify/trust"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
	"github.com/cvmd/cvmd/attest/sim"
	"github.com/cvmd/cvmd/attest/verify"
)

// fixture is a simulated VM: TPM simulator, optional simulated SNP, and a
// measurement log with a platform and a child-table event.
type fixture struct {
	rw    io.ReadWriteCloser
	tpm   *attest.TPM
	snp   *sim.SNP
	a     *attest.Attester
	log   attest.EventLog
	table string
}

// fixtureBoot is the boot id of the fixture's measurement log.
const fixtureBoot = "0123456789abcdef"

// newFixture opens the TPM simulator (process-global: tests using it are not parallel).
func newFixture(t testing.TB, withTPM bool, snpOpts *sim.SNPOptions) *fixture {
	t.Helper()
	f := &fixture{}
	f.a = &attest.Attester{Simulated: true, Log: func() attest.EventLog { return f.log }}
	if snpOpts != nil {
		s, err := sim.NewSNP(*snpOpts)
		if err != nil {
			t.Fatal(err)
		}
		f.snp, f.a.SNP = s, s
	}
	if withTPM {
		rw, err := sim.OpenTPM()
		if err != nil {
			t.Fatal(err)
		}
		f.rw = rw
		tp, err := attest.NewTPM(rw)
		if err != nil {
			rw.Close()
			t.Fatal(err)
		}
		f.tpm, f.a.TPM = tp, tp
		t.Cleanup(func() { tp.Close(); rw.Close() })
		f.extend(t, attest.EventPlatform, attest.PlatformInfo{TPM: "simulator", SNP: "simulated", Simulated: true})
		f.extend(t, attest.EventBoot, attest.Boot{BootID: fixtureBoot})
		h := sha256.Sum256([]byte("child table"))
		f.table = hex.EncodeToString(h[:])
		f.extend(t, attest.EventChildTable, attest.ChildTable{SHA256: f.table})
		f.extend(t, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 1})
		f.extend(t, attest.EventChildStart, attest.ChildStart{Child: "agent", Generation: 2})
		me := attest.ManifestEvent([]byte(`{"id":"c1"}`))
		if err := f.tpm.Extend(me); err != nil {
			t.Fatal(err)
		}
		f.log = append(f.log, me)
	}
	return f
}

func (f *fixture) extend(t testing.TB, typ string, v any) {
	t.Helper()
	e, err := attest.JSONEvent(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.tpm.Extend(e); err != nil {
		t.Fatal(err)
	}
	f.log = append(f.log, e)
}

func (f *fixture) akPin() string {
	s := sha256.Sum256(f.tpm.AKPub())
	return hex.EncodeToString(s[:])
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// wantCheck asserts err is a *CheckError for check.
func wantCheck(t *testing.T, err error, check string) {
	t.Helper()
	if err == nil {
		t.Fatalf("verified; want refusal by check %q", check)
	}
	if got := verify.CheckName(err); got != check {
		t.Fatalf("refused by %q (%v); want check %q", got, err, check)
	}
	t.Logf("refused as expected: %v", err)
}

// resign re-encodes claims and signs them with the fixture's AK, as an
// attacker in control of the attestation child could.
func (f *fixture) resign(t *testing.T, c *eat.Claims) []byte {
	t.Helper()
	return resignWith(t, f.tpm, c)
}

func resignWith(t *testing.T, tp *attest.TPM, c *eat.Claims) []byte {
	t.Helper()
	tok, err := eat.Encode(c, attest.DefaultIssuer, time.Now(), tp.Sign)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func decode(t *testing.T, tok []byte) *eat.Claims {
	t.Helper()
	_, c, err := eat.Decode(tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVTPMRandomNonces(t *testing.T) {
	f := newFixture(t, true, nil)
	pol := &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}, ChildTableSHA256: f.table}}
	for i := range 5 {
		n := random(t, 1+i*7) // 1..29 bytes: padding exercised
		tok, err := f.a.Attest(attest.Request{Nonce: n, Platform: attest.VTPM})
		if err != nil {
			t.Fatal(err)
		}
		r, err := verify.Token(tok, verify.Options{Nonce: n, Policy: pol, AllowSimulated: true})
		if err != nil {
			t.Fatalf("nonce %x: %v", n, err)
		}
		if !r.Simulated || r.Platform != attest.VTPM || len(r.Events) != len(f.log) || r.Restarts["agent"] != 2 {
			t.Fatalf("result %+v", r)
		}
	}
}

func TestVTPMRefusals(t *testing.T) {
	f := newFixture(t, true, nil)
	nonce := random(t, 32)
	tok, err := f.a.Attest(attest.Request{Nonce: nonce, Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	pin := verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}}
	base := verify.Options{Nonce: nonce, Policy: &verify.Policy{CVMD: pin}, AllowSimulated: true}

	otherNonce := random(t, 32)
	old, err := f.a.Attest(attest.Request{Nonce: otherNonce, Platform: attest.VTPM})
	if err != nil {
		t.Fatal(err)
	}
	// A replayed quote: an old quote (over otherNonce) in a token that
	// claims the fresh nonce, signed with the real AK.
	replayed := decode(t, old)
	replayed.Nonce = nonce
	replayedTok := f.resign(t, replayed)

	tampered := decode(t, tok)
	log, err := attest.ParseLog(tampered.EventLog)
	if err != nil {
		t.Fatal(err)
	}
	log[1].Data = []byte(`{"sha256":"` + hex.EncodeToString(make([]byte, 32)) + `"}`)
	if tampered.EventLog, err = attest.MarshalLog(log); err != nil {
		t.Fatal(err)
	}
	tamperedTok := f.resign(t, tampered)

	dropped := decode(t, tok)
	dlog, _ := attest.ParseLog(dropped.EventLog)
	dropped.EventLog, _ = attest.MarshalLog(dlog[:3]) // hide the last restart
	droppedTok := f.resign(t, dropped)

	lying := decode(t, tok)
	lying.VTPM.PCRs["sha256:0"] = hex.EncodeToString(random(t, 32))
	lyingTok := f.resign(t, lying)

	flipped := bytes.Clone(tok)
	flipped[len(flipped)-1] ^= 1

	wrongPCR := &verify.Policy{CVMD: pin, PCRs: map[string]map[uint32][]byte{"sha256": {16: random(t, 32)}}}
	goodPCR := &verify.Policy{CVMD: pin, PCRs: map[string]map[uint32][]byte{"sha256": {0: make([]byte, 32)}}}
	tests := []struct {
		name  string
		tok   []byte
		opts  func(o *verify.Options)
		check string // "" = must pass
	}{
		{"good token", tok, nil, ""},
		{"good PCR policy", tok, func(o *verify.Options) { o.Policy = goodPCR }, ""},
		{"wrong nonce", tok, func(o *verify.Options) { o.Nonce = otherNonce }, "eat.nonce"},
		{"replayed quote", replayedTok, nil, "vtpm.nonce"},
		{"wrong PCR 16", tok, func(o *verify.Options) { o.Policy = wrongPCR }, "vtpm.pcrs sha256:16"},
		{"tampered event log", tamperedTok, nil, "vtpm.eventlog PCR 15 replay"},
		{"truncated event log", droppedTok, nil, "vtpm.eventlog PCR 15 replay"},
		{"flipped signature bit", flipped, nil, "eat.signature"},
		{"claims differ from the quote", lyingTok, nil, "eat.claims x-cocos-vtpm sha256:0"},
		{"SNP policy on vTPM-only evidence", tok, func(o *verify.Options) {
			o.Policy = &verify.Policy{CVMD: pin, SNP: &check.Policy{Policy: sim.DefaultPolicy}}
		}, "snp.policy"},
		{"unpinned AK", tok, func(o *verify.Options) { o.Policy = &verify.Policy{} }, "vtpm.ak"},
		{"simulated not allowed", tok, func(o *verify.Options) { o.AllowSimulated = false }, "simulated"},
		{"wrong child table", tok, func(o *verify.Options) {
			o.Policy = &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: pin.TrustedAKSHA256, ChildTableSHA256: hex.EncodeToString(random(t, 32))}}
		}, "cvmd.child_table"},
		{"garbage", []byte("not a token"), nil, "eat.decode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			if tc.opts != nil {
				tc.opts(&o)
			}
			_, err := verify.Token(tc.tok, o)
			if tc.check == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCheck(t, err, tc.check)
		})
	}
}

func realAMDBundle(t *testing.T) []byte {
	r := trust.DefaultRootCerts["Milan"]
	if r == nil || r.ProductCerts == nil {
		t.Fatal("no embedded Milan roots")
	}
	var b []byte
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ProductCerts.Ask.Raw})...)
	return append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ProductCerts.Ark.Raw})...)
}

// tamperSNP rewrites the SNP report inside an SNP token (without re-signing
// the report) and re-signs the token with a key of our own.
func tamperSNP(t *testing.T, tok []byte, edit func(r *sevsnp.Report), simulated ...bool) []byte {
	t.Helper()
	c := decode(t, tok)
	if len(simulated) > 0 {
		c.Simulated = simulated[0]
	}
	var att sevsnp.Attestation
	if err := proto.Unmarshal(c.RawReport, &att); err != nil {
		t.Fatal(err)
	}
	edit(att.Report)
	var err error
	if c.RawReport, err = proto.Marshal(&att); err != nil {
		t.Fatal(err)
	}
	key, _ := attestTestKey()
	out, err := eat.Encode(c, "x", time.Now(), eat.KeySigner(key))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSNP(t *testing.T) {
	good := newFixture(t, false, &sim.SNPOptions{})
	debug := newFixture(t, false, &sim.SNPOptions{Policy: sim.DefaultPolicy | 1<<19})
	rd := random(t, 64)
	tok, err := good.a.Attest(attest.Request{ReportData: rd, Platform: attest.SNP})
	if err != nil {
		t.Fatal(err)
	}
	debugTok, err := debug.a.Attest(attest.Request{ReportData: rd, Platform: attest.SNP})
	if err != nil {
		t.Fatal(err)
	}
	bundle := good.snp.RootsPEM()
	high, _ := kds.ComposeTCBParts(kds.TCBParts{BlSpl: 3, SnpSpl: 9, UcodeSpl: 115})
	low, _ := kds.ComposeTCBParts(kds.TCBParts{BlSpl: 2, SnpSpl: 8, UcodeSpl: 100})
	meas := random(t, 48)
	tests := []struct {
		name  string
		tok   []byte
		o     verify.Options
		check string
	}{
		{"good, fake roots from bundle", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true}, ""},
		{"good, roots from evidence (simulated)", tok, verify.Options{ReportData: rd, AllowSimulated: true}, ""},
		{"real AMD roots", tok, verify.Options{ReportData: rd, AMDBundle: realAMDBundle(t), AllowSimulated: true}, "snp.chain"},
		{"tampered report", tamperSNP(t, tok, func(r *sevsnp.Report) { r.Measurement[0] ^= 1 }), verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true}, "snp.signature"},
		{"wrong REPORT_DATA", tok, verify.Options{ReportData: random(t, 64), AMDBundle: bundle, AllowSimulated: true}, "eat.nonce"},
		{"debug policy", debugTok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true}, "snp.debug"},
		{"too-low TCB", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, MinimumTcb: uint64(high)}}}, "snp.tcb"},
		{"wrong measurement", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, Measurement: meas}}}, "snp.measurement"},
		{"guest SVN too low", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, MinimumGuestSvn: 1}}}, "snp.guest_svn"},
		{"wrong VMPL", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, Vmpl: wrapperspb.UInt32(2)}}}, "snp.vmpl"},
		{"wrong host data", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, HostData: random(t, 32)}}}, "snp.host_data"},
		{"untrusted ID key", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, RequireIdBlock: true, TrustedIdKeyHashes: [][]byte{random(t, 48)}}}}, "snp.policy"},
		{"matching policy", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{SNP: &check.Policy{Policy: sim.DefaultPolicy, MinimumTcb: uint64(low), Vmpl: wrapperspb.UInt32(0), HostData: make([]byte, 32)}}}, ""},
		{"PCR policy on SNP-only evidence", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{PCRs: map[string]map[uint32][]byte{"sha256": {0: make([]byte, 32)}}}}, "vtpm.pcrs"},
		{"child table policy on SNP-only evidence", tok, verify.Options{ReportData: rd, AMDBundle: bundle, AllowSimulated: true,
			Policy: &verify.Policy{CVMD: verify.CVMDPolicy{ChildTableSHA256: hex.EncodeToString(make([]byte, 32))}}}, "cvmd.child_table"},
		{"simulated refused", tok, verify.Options{ReportData: rd, AMDBundle: bundle}, "simulated"},
		{"simulated claim stripped, still refused by its chain", tamperSNP(t, tok, func(*sevsnp.Report) {}, false), verify.Options{ReportData: rd, AMDBundle: bundle}, "simulated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify.Token(tc.tok, tc.o)
			if tc.check == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCheck(t, err, tc.check)
		})
	}
}

// TestSNPReportDataOnly checks REPORT_DATA itself (not the eat_nonce claim)
// by lying in the claim: an attacker re-signing with its own key.
func TestSNPReportDataOnly(t *testing.T) {
	f := newFixture(t, false, &sim.SNPOptions{})
	rd, other := random(t, 64), random(t, 64)
	tok, err := f.a.Attest(attest.Request{ReportData: rd, Platform: attest.SNP})
	if err != nil {
		t.Fatal(err)
	}
	c := decode(t, tok)
	c.Nonce = other
	key, _ := attestTestKey()
	lie, err := eat.Encode(c, "x", time.Now(), eat.KeySigner(key))
	if err != nil {
		t.Fatal(err)
	}
	_, err = verify.Token(lie, verify.Options{ReportData: other, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true})
	wantCheck(t, err, "snp.report_data")
	// The same lie with the report intact but the key swapped fails the signer binding.
	c.Nonce = rd
	lie, _ = eat.Encode(c, "x", time.Now(), eat.KeySigner(key))
	_, err = verify.Token(lie, verify.Options{ReportData: rd, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true})
	wantCheck(t, err, "eat.signature")
}

func TestSNPvTPM(t *testing.T) {
	f := newFixture(t, true, &sim.SNPOptions{})
	tee, nonce := random(t, 64), random(t, 32)
	tok, err := f.a.Attest(attest.Request{ReportData: tee, Nonce: nonce, Platform: attest.SNPvTPM})
	if err != nil {
		t.Fatal(err)
	}
	o := verify.Options{ReportData: tee, Nonce: nonce, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true,
		Policy: &verify.Policy{CVMD: verify.CVMDPolicy{ChildTableSHA256: f.table}}}
	r, err := verify.Token(tok, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.SNP == nil || r.TPM == nil || !r.Simulated {
		t.Fatalf("result %+v", r)
	}
	// The REPORT_DATA binds teeNonce and the AK as Cocos does.
	var att attestpb.Attestation
	if err := proto.Unmarshal(r.Claims.RawReport, &att); err != nil {
		t.Fatal(err)
	}
	p, _ := attest.PadTEENonce(tee)
	want := attest.SNPvTPMReportData(p, att.GetAkPub())
	if !bytes.Equal(att.GetSevSnpAttestation().GetReport().GetReportData(), want[:]) {
		t.Fatal("REPORT_DATA is not SHA3-512(teeNonce ‖ AK pub)")
	}
	// Through the agent an absent vtpmNonce arrives as zeros: the token's
	// eat_nonce is then the teeNonce, and a verifier given only --tee accepts it.
	onlyTee, err := f.a.Attest(attest.Request{ReportData: tee, Nonce: make([]byte, 32), Platform: attest.SNPvTPM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.Token(onlyTee, verify.Options{ReportData: tee, AMDBundle: f.snp.RootsPEM(), AllowSimulated: true}); err != nil {
		t.Fatalf("teeNonce only: %v", err)
	}
	// Without the expected teeNonce the binding is still checked from the claim.
	o2 := o
	o2.ReportData = nil
	if _, err := verify.Token(tok, o2); err != nil {
		t.Fatal(err)
	}
	o3 := o
	o3.ReportData = random(t, 64)
	_, err = verify.Token(tok, o3)
	wantCheck(t, err, "snp.report_data")
	o4 := o
	o4.Nonce = random(t, 32)
	_, err = verify.Token(tok, o4)
	wantCheck(t, err, "eat.nonce")
}

func TestUnavailablePlatforms(t *testing.T) {
	a := &attest.Attester{}
	for _, tc := range []struct {
		p    attest.Platform
		want error
	}{
		{attest.SNP, attest.ErrUnsupportedPlatform},
		{attest.VTPM, attest.ErrUnsupportedPlatform},
		{attest.Azure, attest.ErrUnsupportedPlatform},
		{attest.TDX, attest.ErrUnsupportedPlatform},
		{attest.NoCC, attest.ErrBadRequest},
	} {
		if _, err := a.Attest(attest.Request{Platform: tc.p, Nonce: []byte("12345678")}); !errors.Is(err, tc.want) {
			t.Errorf("%v: %v, want %v", tc.p, err, tc.want)
		}
	}
	f := &attest.Attester{SNP: mustSNP(t)}
	if _, err := f.Attest(attest.Request{Platform: attest.SNP, ReportData: make([]byte, 65)}); !errors.Is(err, attest.ErrBadRequest) {
		t.Errorf("65-byte report data: %v", err)
	}
}

func mustSNP(t *testing.T) *sim.SNP {
	s, err := sim.NewSNP(sim.SNPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
