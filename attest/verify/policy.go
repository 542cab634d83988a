package verify

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-sev-guest/proto/check"
	tdxcheck "github.com/google/go-tdx-guest/proto/checkconfig"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/cvmd/cvmd/attest/corim"
)

// Policy is what a verifier requires of the evidence. Its JSON form is
// Cocos's historic attestation_policy.json (§5.5): "policy" is go-sev-guest's
// check.Policy in protojson, "rootOfTrust" its check.RootOfTrust (only
// cabundlePaths/cabundles and productLine are used: no network), "tdx" is
// go-tdx-guest's checkconfig.Policy in protojson, "pcr_values"
// maps bank → PCR index → hex; "cvmd" holds cvmd's own requirements.
type Policy struct {
	SNP *check.Policy
	// TDX is go-tdx-guest's checkconfig.Policy ("tdx" in the JSON file).
	TDX         *tdxcheck.Policy
	RootOfTrust *check.RootOfTrust
	// PCRs maps a bank ("sha1", "sha256", "sha384") to PCR index to value.
	PCRs map[string]map[uint32][]byte
	CVMD CVMDPolicy
	// CoRIM holds reference values (a Cocos or cvmd CoRIM file) checked
	// after the evidence itself verified; nil = none.
	CoRIM *corim.CoRIM
}

// CVMDPolicy are cvmd's requirements beyond Cocos's policy file.
type CVMDPolicy struct {
	// ChildTableSHA256 (hex) is the expected supervisor child table hash:
	// the measurement log must contain it and no other. "" = not checked.
	ChildTableSHA256 string `json:"child_table_sha256,omitempty"`
	// TrustedAKSHA256 (hex of SHA-256 of the AK's TPMT_PUBLIC) are the vTPM
	// attestation keys trusted without SNP. vTPM-only evidence needs one.
	TrustedAKSHA256 []string `json:"trusted_ak_sha256,omitempty"`
	// ManifestSHA3256 (hex) is the computation manifest expected in PCR 16's
	// log; "" = not checked.
	ManifestSHA3256 string `json:"manifest_sha3_256,omitempty"`
	// Storage is where the computation's files must live, as the storage
	// event measures it: "disk" (the scratch disk, with authenticated
	// encryption) or "memory"; "" = not checked.
	Storage string `json:"storage,omitempty"`
}

type policyJSON struct {
	Policy      json.RawMessage              `json:"policy,omitempty"`
	TDX         json.RawMessage              `json:"tdx,omitempty"`
	RootOfTrust json.RawMessage              `json:"rootOfTrust,omitempty"`
	PCRValues   map[string]map[string]string `json:"pcr_values,omitempty"`
	CVMD        *CVMDPolicy                  `json:"cvmd,omitempty"`
}

// DefaultSNPGuestPolicy is the most a guest policy may allow when the policy
// file sets none: SMT allowed, bit 17 (reserved, must be 1), nothing else —
// in particular not DEBUG.
const DefaultSNPGuestPolicy = 0x30000

// PolicyOptions say which CoRIM policy files to trust.
type PolicyOptions struct {
	// CoRIMKeys are the keys a signed CoRIM must be signed by.
	CoRIMKeys []crypto.PublicKey
	// AllowUnsignedCoRIM accepts a CoRIM that is not signed (or whose
	// signature cannot be checked because CoRIMKeys is empty).
	AllowUnsignedCoRIM bool
}

// LoadPolicy reads a policy file in either format: a JSON policy (ParsePolicy)
// or a CoRIM (CBOR, signed or not, as Cocos's CLI writes it). A CoRIM is
// refused unless it is signed by one of o.CoRIMKeys or o.AllowUnsignedCoRIM
// is set, and when it holds no reference measurement. Refusals of a CoRIM
// are *CheckError named corim.*.
func LoadPolicy(b []byte, o PolicyOptions) (*Policy, error) {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return ParsePolicy(b)
	}
	c, err := corim.Load(b, corim.LoadOptions{TrustedKeys: o.CoRIMKeys, AllowUnsigned: o.AllowUnsignedCoRIM})
	if err != nil {
		var ce *corim.Error
		if errors.As(err, &ce) {
			return nil, &CheckError{Check: ce.Check, Err: ce.Err}
		}
		return nil, fail("corim.decode", err)
	}
	return &Policy{CoRIM: c}, nil
}

// ParsePolicy decodes a policy file strictly (unknown fields are refused).
func ParsePolicy(b []byte) (*Policy, error) {
	var pj policyJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pj); err != nil {
		return nil, fmt.Errorf("verify: policy: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("verify: policy: trailing data after JSON object")
	}
	p := &Policy{}
	if len(pj.Policy) > 0 && string(pj.Policy) != "null" {
		p.SNP = &check.Policy{}
		if err := protojson.Unmarshal(pj.Policy, p.SNP); err != nil {
			return nil, fmt.Errorf("verify: policy: \"policy\": %w", err)
		}
	}
	if len(pj.TDX) > 0 && string(pj.TDX) != "null" {
		p.TDX = &tdxcheck.Policy{}
		if err := protojson.Unmarshal(pj.TDX, p.TDX); err != nil {
			return nil, fmt.Errorf("verify: policy: \"tdx\": %w", err)
		}
	}
	if len(pj.RootOfTrust) > 0 && string(pj.RootOfTrust) != "null" {
		p.RootOfTrust = &check.RootOfTrust{}
		if err := protojson.Unmarshal(pj.RootOfTrust, p.RootOfTrust); err != nil {
			return nil, fmt.Errorf("verify: policy: \"rootOfTrust\": %w", err)
		}
	}
	if len(pj.PCRValues) > 0 {
		p.PCRs = map[string]map[uint32][]byte{}
		for bank, vals := range pj.PCRValues {
			size, ok := bankSizes[bank]
			if !ok {
				return nil, fmt.Errorf("verify: policy: pcr_values: unknown bank %q (want sha1, sha256, sha384)", bank)
			}
			m := map[uint32][]byte{}
			for idx, hx := range vals {
				i, err := strconv.ParseUint(idx, 10, 8)
				if err != nil || i > 23 {
					return nil, fmt.Errorf("verify: policy: pcr_values.%s: PCR index %q not in 0–23", bank, idx)
				}
				v, err := hex.DecodeString(strings.TrimPrefix(hx, "0x"))
				if err != nil || len(v) != size {
					return nil, fmt.Errorf("verify: policy: pcr_values.%s.%s: want %d hex bytes", bank, idx, size)
				}
				m[uint32(i)] = v
			}
			p.PCRs[bank] = m
		}
	}
	if pj.CVMD != nil {
		p.CVMD = *pj.CVMD
		for _, h := range append(append([]string{}, p.CVMD.TrustedAKSHA256...), p.CVMD.ChildTableSHA256, p.CVMD.ManifestSHA3256) {
			if h == "" {
				continue
			}
			if v, err := hex.DecodeString(h); err != nil || len(v) != 32 {
				return nil, fmt.Errorf("verify: policy: cvmd: %q is not 32 hex bytes", h)
			}
		}
	}
	return p, nil
}

var bankSizes = map[string]int{"sha1": 20, "sha256": 32, "sha384": 48}
