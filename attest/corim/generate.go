package corim

import (
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"
)

// Reference values for the generators. Cocos's `policy create-corim` takes
// the same inputs; unlike it, cvmd writes every one of them, each 48-byte
// register as a sha-384 digest, under a key saying which register it is.

// SNPValues are what an SEV-SNP guest must show.
type SNPValues struct {
	// Measurements are acceptable launch MEASUREMENTs (48 bytes each); at
	// least one is required.
	Measurements [][]byte
	// MinGuestSVN, if not nil, is the lowest acceptable GUEST_SVN.
	MinGuestSVN *uint64
	// Policy, if not nil, is the exact guest POLICY.
	Policy *uint64
	// HostData, if not nil, is the exact HOST_DATA (32 bytes).
	HostData []byte
	// MinTCB, if not nil, is the lowest REPORTED_TCB (component-wise).
	MinTCB *uint64
	// Product (Milan, Genoa, …) sets the environment instance as Cocos does.
	Product string
}

// TDXValues are what a TD must show. MRTD is required; the rest optional.
type TDXValues struct {
	MRTD          []byte
	RTMRs         [][]byte // up to 4; a nil entry leaves that RTMR free
	MRSEAM        []byte
	MRConfigID    []byte
	MROwner       []byte
	MROwnerConfig []byte
	Attributes    *uint64
	XFAM          *uint64
}

// VTPMValues are what a vTPM quote must show.
type VTPMValues struct {
	// PCRs maps a PCR number to its value: 32 bytes pins the SHA-256 bank,
	// 48 bytes the SHA-384 bank.
	PCRs map[uint32][][]byte
	// AKs are SHA-256 digests of trusted attestation keys' TPMT_PUBLIC
	// (needed for vTPM evidence without SNP or TDX).
	AKs [][]byte
	// ChildTable and Manifest pin cvmd's measurement log (sha-256 of the
	// child table, sha3-256 of the manifest).
	ChildTable []byte
	Manifest   []byte
}

// Env returns the environment cvmd's generator writes for model.
func Env(model string) Environment {
	vendor := map[string]string{ModelSNP: VendorAMD, ModelTDX: VendorIntel, ModelVTPM: VendorTCG, ModelCVMD: VendorCVMD}[model]
	id := uuid.NewHash(sha1.New(), uuid.NameSpaceOID, []byte("cvmd.dev/corim/"+model), 5)
	return Environment{ClassID: &TypedBytes{Tag: TagUUID, Value: id[:]}, Vendor: vendor, Model: model}
}

func labelled(key uint64) MKey { return MKey{Kind: KeyUint, Uint: key} }

func digestOf(b []byte) (Digest, error) {
	switch len(b) {
	case 32:
		return Digest{Alg: AlgSHA256, Value: b}, nil
	case 48:
		return Digest{Alg: AlgSHA384, Value: b}, nil
	case 64:
		return Digest{Alg: AlgSHA512, Value: b}, nil
	}
	return Digest{}, fmt.Errorf("a value of %d bytes is not a SHA-256/384/512 digest", len(b))
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// New wraps triples and key triples into a CoRIM named like Cocos's
// ("<platform>-corim-<uuid>"), under cvmd's profile.
func New(platform string, refs []RefTriple, keys []KeyTriple) *CoRIM {
	return &CoRIM{
		ID:      fmt.Sprintf("%s-corim-%s", platform, uuid.NewString()),
		Profile: Profile,
		Tags:    []CoMID{{TagID: fmt.Sprintf("%s-tag-%s", platform, uuid.NewString()), RefValues: refs, AttestKeys: keys}},
	}
}

// SNPTriple builds the reference triple for v.
func SNPTriple(v SNPValues) (RefTriple, error) {
	if len(v.Measurements) == 0 {
		return RefTriple{}, errors.New("corim: SNP needs a launch measurement")
	}
	meas := Measurement{Key: labelled(SNPMeasurement)}
	for _, m := range v.Measurements {
		if len(m) != 48 {
			return RefTriple{}, fmt.Errorf("corim: SNP measurement of %d bytes, want 48", len(m))
		}
		meas.Digests = append(meas.Digests, Digest{Alg: AlgSHA384, Value: m})
	}
	if v.MinGuestSVN != nil {
		meas.SVN = &SVN{Value: *v.MinGuestSVN, Min: true}
	}
	t := RefTriple{Env: Env(ModelSNP), Measurements: []Measurement{meas}}
	if v.Product != "" {
		t.Env.Instance = ProductInstance(v.Product)
	}
	if v.HostData != nil {
		if len(v.HostData) != 32 {
			return RefTriple{}, fmt.Errorf("corim: SNP host data of %d bytes, want 32", len(v.HostData))
		}
		t.Measurements = append(t.Measurements, Measurement{Key: labelled(SNPHostData), RawValue: v.HostData})
	}
	if v.Policy != nil {
		t.Measurements = append(t.Measurements, Measurement{Key: labelled(SNPPolicy), RawValue: le64(*v.Policy)})
	}
	if v.MinTCB != nil {
		t.Measurements = append(t.Measurements, Measurement{Key: labelled(SNPReportedTCB), SVN: &SVN{Value: *v.MinTCB, Min: true}})
	}
	return t, nil
}

// TDXTriple builds the reference triple for v.
func TDXTriple(v TDXValues) (RefTriple, error) {
	t := RefTriple{Env: Env(ModelTDX)}
	add := func(key uint64, b []byte) error {
		if b == nil {
			return nil
		}
		if len(b) != 48 {
			return fmt.Errorf("corim: TDX %s of %d bytes, want 48", RegisterName(ModelTDX, key), len(b))
		}
		t.Measurements = append(t.Measurements, Measurement{Key: labelled(key), Digests: []Digest{{Alg: AlgSHA384, Value: b}}})
		return nil
	}
	if v.MRTD == nil {
		return RefTriple{}, errors.New("corim: TDX needs MRTD")
	}
	if len(v.RTMRs) > 4 {
		return RefTriple{}, fmt.Errorf("corim: %d RTMRs, a TD has 4", len(v.RTMRs))
	}
	regs := []struct {
		key uint64
		b   []byte
	}{{TDXMRTD, v.MRTD}, {TDXMRSEAM, v.MRSEAM}, {TDXMRConfigID, v.MRConfigID}, {TDXMROwner, v.MROwner}, {TDXMROwnerConfig, v.MROwnerConfig}}
	for i, r := range v.RTMRs {
		regs = append(regs, struct {
			key uint64
			b   []byte
		}{uint64(TDXRTMR0 + i), r})
	}
	for _, r := range regs {
		if err := add(r.key, r.b); err != nil {
			return RefTriple{}, err
		}
	}
	if v.Attributes != nil {
		t.Measurements = append(t.Measurements, Measurement{Key: labelled(TDXAttributes), RawValue: le64(*v.Attributes)})
	}
	if v.XFAM != nil {
		t.Measurements = append(t.Measurements, Measurement{Key: labelled(TDXXFAM), RawValue: le64(*v.XFAM)})
	}
	return t, nil
}

// VTPMTriples builds the vTPM (and cvmd log) reference triples and the AK
// key triple for v.
func VTPMTriples(v VTPMValues) ([]RefTriple, []KeyTriple, error) {
	var refs []RefTriple
	var keys []KeyTriple
	tpm := RefTriple{Env: Env(ModelVTPM)}
	for pcr := uint32(0); pcr < 24; pcr++ {
		vals, ok := v.PCRs[pcr]
		if !ok {
			continue
		}
		m := Measurement{Key: labelled(uint64(pcr))}
		for _, b := range vals {
			if len(b) != 32 && len(b) != 48 {
				return nil, nil, fmt.Errorf("corim: PCR %d value of %d bytes, want 32 (SHA-256) or 48 (SHA-384)", pcr, len(b))
			}
			d, _ := digestOf(b)
			m.Digests = append(m.Digests, d)
		}
		tpm.Measurements = append(tpm.Measurements, m)
	}
	for pcr := range v.PCRs {
		if pcr > 23 {
			return nil, nil, fmt.Errorf("corim: PCR %d: a TPM has PCRs 0–23", pcr)
		}
	}
	if len(tpm.Measurements) > 0 {
		refs = append(refs, tpm)
	}
	log := RefTriple{Env: Env(ModelCVMD)}
	if v.ChildTable != nil {
		if len(v.ChildTable) != 32 {
			return nil, nil, errors.New("corim: child table hash must be 32 bytes")
		}
		log.Measurements = append(log.Measurements, Measurement{Key: labelled(CVMDChildTable), Digests: []Digest{{Alg: AlgSHA256, Value: v.ChildTable}}})
	}
	if v.Manifest != nil {
		if len(v.Manifest) != 32 {
			return nil, nil, errors.New("corim: manifest hash must be 32 bytes (SHA3-256)")
		}
		log.Measurements = append(log.Measurements, Measurement{Key: labelled(CVMDManifest), Digests: []Digest{{Alg: AlgSHA3_256, Value: v.Manifest}}})
	}
	if len(log.Measurements) > 0 {
		refs = append(refs, log)
	}
	if len(v.AKs) > 0 {
		kt := KeyTriple{Env: Env(ModelVTPM)}
		for _, ak := range v.AKs {
			if len(ak) != 32 {
				return nil, nil, errors.New("corim: AK thumbprint must be a 32-byte SHA-256")
			}
			kt.Thumbprints = append(kt.Thumbprints, Digest{Alg: AlgSHA256, Value: ak})
		}
		keys = append(keys, kt)
	}
	return refs, keys, nil
}
