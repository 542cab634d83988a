package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/eat"
)

var bankOf = map[tpm.HashAlgo]string{tpm.HashAlgo_SHA1: "sha1", tpm.HashAlgo_SHA256: "sha256", tpm.HashAlgo_SHA384: "sha384"}

// verifyVTPM checks the AK's trust, every quote, the PCR policy and the
// measurement log; it returns the AK.
func verifyVTPM(r *Result, att *attestpb.Attestation, c *eat.Claims, rs *roots, o Options) (*ecdsa.PublicKey, error) {
	pub, err := tpm2.DecodePublic(att.GetAkPub())
	if err != nil {
		return nil, fail("vtpm.ak", fmt.Errorf("decoding AK public area: %w", err))
	}
	k, err := pub.Key()
	if err != nil {
		return nil, fail("vtpm.ak", err)
	}
	ak, ok := k.(*ecdsa.PublicKey)
	if !ok || ak.Curve != elliptic.P256() {
		return nil, fail("vtpm.ak", fmt.Errorf("AK is %T, want ECDSA P-256", k))
	}

	// Trust in the AK: an SNP report binding it, Azure's HCL report naming
	// the key that certified it, or a pin in the policy.
	if r.Platform == attest.Azure {
		if err := verifyAzure(r, att, c, rs, o); err != nil {
			return nil, err
		}
	} else if r.Platform == attest.SNPvTPM {
		snp := att.GetSevSnpAttestation()
		if snp == nil {
			return nil, fail("snp.decode", errors.New("SNP-vTPM evidence without an SNP report"))
		}
		tee := o.ReportData
		if tee == nil {
			tee = c.ReportData // binding only: freshness rests on the vTPM nonce
		}
		t, err := attest.PadTEENonce(tee)
		if err != nil {
			return nil, fail("snp.report_data", err)
		}
		want := attest.SNPvTPMReportData(t, att.GetAkPub())
		if err := verifySNP(r, snp, rs, o, want[:]); err != nil {
			return nil, err
		}
		r.pass("vtpm.ak (bound by SNP REPORT_DATA)")
	} else {
		got := sha256Hex(att.GetAkPub())
		pins := o.Policy.CVMD.TrustedAKSHA256
		if o.Policy.CoRIM != nil {
			pins = append(append([]string{}, pins...), corimAKs(o.Policy.CoRIM)...)
		}
		trusted := false
		for _, h := range pins {
			trusted = trusted || h == got
		}
		if !trusted {
			return nil, mismatch("vtpm.ak", "AK sha256 "+got, fmt.Sprintf("one of the policy's trusted AKs (cvmd.trusted_ak_sha256 or CoRIM attest keys) %v", pins))
		}
		r.pass("vtpm.ak (pinned)")
	}

	// Quotes: signed by the AK over the nonce, PCR digests consistent.
	// Without an expected nonce the quotes are only checked to agree with
	// each other (freshness then rests on REPORT_DATA, or on nothing).
	var nonce []byte
	checkedNonce := o.Nonce != nil
	if checkedNonce {
		n, err := attest.PadVTPMNonce(o.Nonce)
		if err != nil {
			return nil, fail("vtpm.nonce", err)
		}
		nonce = n[:]
	} else if q := attest.SHA256Quote(att); q != nil {
		if ad, err := tpm2.DecodeAttestationData(q.GetQuote()); err == nil {
			nonce = ad.ExtraData
		}
	}
	quotes := map[string]*tpm.Quote{}
	for _, q := range att.GetQuotes() {
		bank, ok := bankOf[q.GetPcrs().GetHash()]
		if !ok {
			continue
		}
		if ad, err := tpm2.DecodeAttestationData(q.GetQuote()); err == nil && !bytes.Equal(ad.ExtraData, nonce) {
			return nil, mismatch("vtpm.nonce", hex.EncodeToString(ad.ExtraData), hex.EncodeToString(nonce))
		}
		if err := quote.Verify(q, ak, nonce); err != nil {
			return nil, fail("vtpm.quote", fmt.Errorf("%s quote: %w", bank, err))
		}
		quotes[bank] = q
	}
	q256 := quotes["sha256"]
	if q256 == nil {
		return nil, fail("vtpm.quote", errors.New("no SHA-256 quote"))
	}
	r.pass("vtpm.quote")
	if checkedNonce {
		r.pass("vtpm.nonce")
	}
	r.PCRs = q256.GetPcrs().GetPcrs()
	if q := quotes["sha384"]; q != nil {
		r.PCRs384 = q.GetPcrs().GetPcrs()
	}
	if q := quotes["sha1"]; q != nil {
		r.PCRsSHA1 = q.GetPcrs().GetPcrs()
	}

	// PCR values required by the policy.
	banks := make([]string, 0, len(o.Policy.PCRs))
	for b := range o.Policy.PCRs {
		banks = append(banks, b)
	}
	sort.Strings(banks)
	for _, bank := range banks {
		q := quotes[bank]
		if q == nil {
			return nil, fail("vtpm.pcrs", fmt.Errorf("policy has %s values but the evidence has no verified %s quote", bank, bank))
		}
		idx := make([]int, 0)
		for i := range o.Policy.PCRs[bank] {
			idx = append(idx, int(i))
		}
		sort.Ints(idx)
		for _, i := range idx {
			want := o.Policy.PCRs[bank][uint32(i)]
			got := q.GetPcrs().GetPcrs()[uint32(i)]
			if !bytes.Equal(got, want) {
				return nil, mismatch(fmt.Sprintf("vtpm.pcrs %s:%d", bank, i), hexs(got), hexs(want))
			}
		}
	}
	if len(banks) > 0 {
		r.pass("vtpm.pcrs")
	}
	return ak, checkEventLog(r, c, o)
}

// checkEventLog replays cvmd's measurement log to PCRs 15 and 16 and checks
// the child table and manifest it records.
func checkEventLog(r *Result, c *eat.Claims, o Options) error {
	var log attest.EventLog
	if len(c.EventLog) > 0 {
		var err error
		if log, err = attest.ParseLog(c.EventLog); err != nil {
			return fail("vtpm.eventlog", err)
		}
	}
	for _, pcr := range []uint32{attest.MeasurePCR, attest.ManifestPCR} {
		got, err := log.Replay(pcr)
		if err != nil {
			return fail("vtpm.eventlog", err)
		}
		if want := r.PCRs[pcr]; !bytes.Equal(got, want) {
			return mismatch(fmt.Sprintf("vtpm.eventlog PCR %d replay", pcr), hexs(got), hexs(want)+" (quoted)")
		}
	}
	r.Events = log
	r.pass("vtpm.eventlog")
	r.Restarts = map[string]uint32{}
	var tables []string
	var storages []attest.Storage
	manifest := ""
	for _, e := range log {
		switch e.Type {
		case attest.EventPlatform:
			var pi attest.PlatformInfo
			if json.Unmarshal(e.Data, &pi) == nil && pi.Simulated {
				r.Simulated = true
				if !o.AllowSimulated {
					return fail("simulated", fmt.Errorf("%w (measurement log platform event)", ErrSimulated))
				}
			}
		case attest.EventChildTable:
			var ct attest.ChildTable
			if err := json.Unmarshal(e.Data, &ct); err != nil {
				return fail("cvmd.child_table", err)
			}
			tables = append(tables, ct.SHA256)
		case attest.EventChildStart:
			var cs attest.ChildStart
			if err := json.Unmarshal(e.Data, &cs); err != nil {
				return fail("cvmd.child_start", err)
			}
			if cs.Generation > r.Restarts[cs.Child] {
				r.Restarts[cs.Child] = cs.Generation
			}
		case attest.EventManifest:
			manifest = hexs(e.Data[:32])
		case attest.EventStorage:
			var st attest.Storage
			if err := json.Unmarshal(e.Data, &st); err != nil {
				return fail("cvmd.storage", err)
			}
			storages = append(storages, st)
		}
	}
	r.childTables, r.manifest = tables, manifest
	if len(storages) > 0 {
		r.Storage = &storages[len(storages)-1]
	}
	if want := o.Policy.CVMD.Storage; want != "" {
		if err := checkStorage(storages, want); err != nil {
			return err
		}
		r.pass("cvmd.storage")
	}
	if want := o.Policy.CVMD.ChildTableSHA256; want != "" {
		if len(tables) == 0 {
			return mismatch("cvmd.child_table", "no child-table event", want)
		}
		for _, got := range tables {
			if got != want {
				return mismatch("cvmd.child_table", got, want)
			}
		}
		r.pass("cvmd.child_table")
	}
	if want := o.Policy.CVMD.ManifestSHA3256; want != "" {
		if manifest != want {
			return mismatch("cvmd.manifest", manifest, want)
		}
		r.pass("cvmd.manifest")
	}
	return nil
}

// checkStorage requires every storage event of the log (one per start of
// the supervisor) to be of kind want; "disk" also requires authenticated
// encryption (integrity "aead" and a cipher).
func checkStorage(storages []attest.Storage, want string) error {
	if want != attest.StorageDisk && want != attest.StorageMemory {
		return fail("cvmd.storage", fmt.Errorf("policy storage %q: want %q or %q", want, attest.StorageDisk, attest.StorageMemory))
	}
	if len(storages) == 0 {
		return mismatch("cvmd.storage", "no storage event", want)
	}
	for _, st := range storages {
		got := st.Kind
		if st.Kind == attest.StorageDisk && (st.Integrity != "aead" || st.Cipher == "") {
			got = fmt.Sprintf("disk with cipher %q and integrity %q", st.Cipher, st.Integrity)
		}
		if got != want {
			if st.Reason != "" {
				got += " (" + st.Reason + ")"
			}
			return mismatch("cvmd.storage", got, want)
		}
	}
	return nil
}
