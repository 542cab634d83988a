package corim

import (
	"bytes"
	"encoding/asn1"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"

	"github.com/cvmd/cvmd/attest/strictcbor"
)

// Parse decodes an unsigned CoRIM: an unsigned-corim-map, bare (as Cocos
// writes it) or under tag 501. It checks structure only: Load also checks
// the signature and that the CoRIM holds a reference measurement.
func Parse(b []byte) (*CoRIM, error) {
	var tag cbor.RawTag
	body := b
	if err := strictcbor.Unmarshal(b, &tag); err == nil {
		switch tag.Number {
		case TagUnsignedCoRIM:
			body = tag.Content
		case TagCOSESign1:
			return nil, errf("corim.decode", "this is a signed CoRIM (COSE_Sign1): load it with a trusted key")
		default:
			return nil, errf("corim.decode", "CBOR tag %d, want an unsigned-corim-map (bare or tag %d)", tag.Number, TagUnsignedCoRIM)
		}
	}
	m, err := decodeMap(body, "unsigned-corim-map", keys{0: "corim-id", 1: "tags", 3: "profile", 4: "rim-validity", 5: "entities"})
	if err != nil {
		return nil, err
	}
	c := &CoRIM{}
	raw, ok := m[0]
	if !ok {
		return nil, errf("corim.decode", "unsigned-corim-map has no corim-id (key 0)")
	}
	if c.ID, err = decodeTagID(raw); err != nil {
		return nil, errf("corim.decode", "corim-id: %v", err)
	}
	if raw, ok := m[3]; ok {
		if c.Profile, err = decodeProfile(raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := m[4]; ok {
		if c.NotBefore, c.NotAfter, err = decodeValidity(raw); err != nil {
			return nil, err
		}
	}
	// Cocos writes "tags": null when its generator produced no CoMID.
	var tags []cbor.RawMessage
	if raw, ok := m[1]; ok {
		if err := strictcbor.Unmarshal(raw, &tags); err != nil {
			return nil, errf("corim.decode", "tags: %v", err)
		}
	}
	for i, t := range tags {
		var rt cbor.RawTag
		if err := strictcbor.Unmarshal(t, &rt); err != nil {
			return nil, errf("corim.decode", "tag %d: %v", i, err)
		}
		switch rt.Number {
		case TagCoMID:
		case TagCoSWID, TagCoTL:
			return nil, errf("corim.unsupported", "tag %d is a CBOR tag %d (CoSWID/CoTL): only CoMIDs (%d) are supported", i, rt.Number, TagCoMID)
		default:
			return nil, errf("corim.decode", "tag %d has CBOR tag %d, want %d (CoMID)", i, rt.Number, TagCoMID)
		}
		var content []byte
		if err := strictcbor.Unmarshal(rt.Content, &content); err != nil {
			return nil, errf("corim.decode", "CoMID %d: content is not a byte string: %v", i, err)
		}
		cm, err := decodeCoMID(content)
		if err != nil {
			return nil, wrapAt(err, fmt.Sprintf("CoMID %d", i))
		}
		c.Tags = append(c.Tags, *cm)
	}
	return c, nil
}

// keys lists the keys a map may have and names them.
type keys map[int64]string

type rawMap map[int64]cbor.RawMessage

// decodeMap decodes a CBOR map with integer keys and refuses a key that is
// not in allowed: an unknown key may carry a constraint cvmd would ignore.
func decodeMap(b []byte, what string, allowed keys) (rawMap, error) {
	var m rawMap
	if err := strictcbor.Unmarshal(b, &m); err != nil {
		return nil, errf("corim.decode", "%s: %v", what, err)
	}
	if m == nil {
		return nil, errf("corim.decode", "%s is null", what)
	}
	var unknown []int64
	for k := range m {
		if _, ok := allowed[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, errf("corim.unsupported", "%s key %d is not supported (refused rather than ignored)", what, unknown[0])
	}
	return m, nil
}

func wrapAt(err error, where string) error {
	if e, ok := err.(*Error); ok {
		return &Error{Check: e.Check, Err: fmt.Errorf("%s: %w", where, e.Err)}
	}
	return fmt.Errorf("%s: %w", where, err)
}

// decodeTagID reads a tag-id / corim-id: text, or a 16-byte UUID.
func decodeTagID(raw cbor.RawMessage) (string, error) {
	if tagged(raw) {
		return "", fmt.Errorf("a tagged value, want text or a 16-byte UUID")
	}
	var s string
	if err := strictcbor.Unmarshal(raw, &s); err == nil {
		if s == "" {
			return "", fmt.Errorf("empty")
		}
		return s, nil
	}
	var b []byte
	if err := strictcbor.Unmarshal(raw, &b); err != nil || len(b) != 16 {
		return "", fmt.Errorf("neither text nor a 16-byte UUID")
	}
	u, _ := uuid.FromBytes(b)
	return u.String(), nil
}

func decodeProfile(raw cbor.RawMessage) (string, error) {
	var t cbor.RawTag
	if err := strictcbor.Unmarshal(raw, &t); err != nil {
		return "", errf("corim.decode", "profile: %v", err)
	}
	var p string
	switch t.Number {
	case 32: // URI
		if err := strictcbor.Unmarshal(t.Content, &p); err != nil {
			return "", errf("corim.decode", "profile URI: %v", err)
		}
	case TagOID:
		var b []byte
		if err := strictcbor.Unmarshal(t.Content, &b); err != nil {
			return "", errf("corim.decode", "profile OID: %v", err)
		}
		oid, err := parseOID(b)
		if err != nil {
			return "", errf("corim.decode", "profile OID: %v", err)
		}
		p = oid
	default:
		return "", errf("corim.decode", "profile has CBOR tag %d, want 32 (URI) or 111 (OID)", t.Number)
	}
	if p != Profile {
		return "", errf("corim.unsupported", "profile %q: only CoRIMs without a profile (Cocos) or with %q (cvmd) are understood", p, Profile)
	}
	return p, nil
}

// Profile is the profile URI cvmd's generator writes: measurement keys are
// the register numbers of docs/attestation.md.
const Profile = "tag:cvmd.dev,2026:corim/v1"

// parseOID turns the DER content octets of an OID into dotted form.
func parseOID(b []byte) (string, error) {
	full := append([]byte{0x06, byte(len(b))}, b...)
	if len(b) > 127 {
		return "", fmt.Errorf("OID too long")
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(full, &oid); err != nil {
		return "", err
	}
	parts := make([]string, len(oid))
	for i, v := range oid {
		parts[i] = strconv.Itoa(v)
	}
	return strings.Join(parts, "."), nil
}

func decodeValidity(raw cbor.RawMessage) (notBefore, notAfter time.Time, err error) {
	m, err := decodeMap(raw, "rim-validity", keys{0: "not-before", 1: "not-after"})
	if err != nil {
		return
	}
	b, ok := m[1]
	if !ok {
		return notBefore, notAfter, errf("corim.decode", "rim-validity has no not-after")
	}
	if notAfter, err = decodeTime(b); err != nil {
		return
	}
	if b, ok := m[0]; ok {
		if notBefore, err = decodeTime(b); err != nil {
			return
		}
	}
	return
}

func decodeTime(raw cbor.RawMessage) (time.Time, error) {
	var t cbor.RawTag
	if err := strictcbor.Unmarshal(raw, &t); err != nil || t.Number != TagEpochTime {
		return time.Time{}, errf("corim.decode", "time is not an epoch time (tag 1)")
	}
	var s int64
	if err := strictcbor.Unmarshal(t.Content, &s); err != nil {
		return time.Time{}, errf("corim.decode", "time: %v", err)
	}
	return time.Unix(s, 0), nil
}

func decodeCoMID(b []byte) (*CoMID, error) {
	m, err := decodeMap(b, "concise-mid-tag", keys{0: "language", 1: "tag-identity", 2: "entities", 3: "linked-tags", 4: "triples"})
	if err != nil {
		return nil, err
	}
	c := &CoMID{}
	raw, ok := m[1]
	if !ok {
		return nil, errf("corim.decode", "no tag-identity")
	}
	id, err := decodeMap(raw, "tag-identity", keys{0: "tag-id", 1: "tag-version"})
	if err != nil {
		return nil, err
	}
	if c.TagID, err = decodeTagID(id[0]); err != nil {
		return nil, errf("corim.decode", "tag-id: %v", err)
	}
	if v, ok := id[1]; ok {
		if err := strictcbor.Unmarshal(v, &c.TagVersion); err != nil {
			return nil, errf("corim.decode", "tag-version: %v", err)
		}
	}
	raw, ok = m[4]
	if !ok {
		return nil, errf("corim.decode", "no triples")
	}
	// Endorsed and identity triples add claims or trust keys for other
	// purposes: leaving them out cannot make a verification more lenient.
	tr, err := decodeMap(raw, "triples-map", keys{0: "reference-triples", 1: "endorsed-triples", 2: "identity-triples", 3: "attest-key-triples"})
	if err != nil {
		return nil, err
	}
	if raw, ok := tr[0]; ok {
		var list []cbor.RawMessage
		if err := strictcbor.Unmarshal(raw, &list); err != nil {
			return nil, errf("corim.decode", "reference-triples: %v", err)
		}
		for i, t := range list {
			rt, err := decodeRefTriple(t)
			if err != nil {
				return nil, wrapAt(err, fmt.Sprintf("reference triple %d", i))
			}
			c.RefValues = append(c.RefValues, *rt)
		}
	}
	if raw, ok := tr[3]; ok {
		var list []cbor.RawMessage
		if err := strictcbor.Unmarshal(raw, &list); err != nil {
			return nil, errf("corim.decode", "attest-key-triples: %v", err)
		}
		for i, t := range list {
			kt, err := decodeKeyTriple(t)
			if err != nil {
				return nil, wrapAt(err, fmt.Sprintf("attest-key triple %d", i))
			}
			c.AttestKeys = append(c.AttestKeys, *kt)
		}
	}
	return c, nil
}

func decodeRefTriple(b []byte) (*RefTriple, error) {
	var parts []cbor.RawMessage
	if err := strictcbor.Unmarshal(b, &parts); err != nil {
		return nil, errf("corim.decode", "%v", err)
	}
	if len(parts) != 2 {
		return nil, errf("corim.decode", "%d elements, want 2 (environment, measurements)", len(parts))
	}
	env, err := decodeEnv(parts[0])
	if err != nil {
		return nil, err
	}
	var ms []cbor.RawMessage
	if err := strictcbor.Unmarshal(parts[1], &ms); err != nil {
		return nil, errf("corim.decode", "measurements: %v", err)
	}
	rt := &RefTriple{Env: *env}
	for i, raw := range ms {
		m, err := decodeMeasurement(raw)
		if err != nil {
			return nil, wrapAt(err, fmt.Sprintf("measurement %d", i))
		}
		rt.Measurements = append(rt.Measurements, *m)
	}
	return rt, nil
}

func decodeKeyTriple(b []byte) (*KeyTriple, error) {
	var parts []cbor.RawMessage
	if err := strictcbor.Unmarshal(b, &parts); err != nil {
		return nil, errf("corim.decode", "%v", err)
	}
	if len(parts) == 3 {
		return nil, errf("corim.unsupported", "attest-key triple with conditions")
	}
	if len(parts) != 2 {
		return nil, errf("corim.decode", "%d elements, want 2 (environment, keys)", len(parts))
	}
	env, err := decodeEnv(parts[0])
	if err != nil {
		return nil, err
	}
	var list []cbor.RawMessage
	if err := strictcbor.Unmarshal(parts[1], &list); err != nil {
		return nil, errf("corim.decode", "keys: %v", err)
	}
	kt := &KeyTriple{Env: *env}
	for i, raw := range list {
		var t cbor.RawTag
		if err := strictcbor.Unmarshal(raw, &t); err != nil {
			return nil, errf("corim.decode", "key %d: %v", i, err)
		}
		if t.Number != TagThumbprint {
			return nil, errf("corim.unsupported", "key %d has CBOR tag %d: only key thumbprints (%d) are supported", i, t.Number, TagThumbprint)
		}
		d, err := decodeDigest(t.Content)
		if err != nil {
			return nil, wrapAt(err, fmt.Sprintf("key %d", i))
		}
		kt.Thumbprints = append(kt.Thumbprints, d)
	}
	if len(kt.Thumbprints) == 0 {
		return nil, errf("corim.decode", "attest-key triple without a key")
	}
	return kt, nil
}

func decodeEnv(b []byte) (*Environment, error) {
	m, err := decodeMap(b, "environment-map", keys{0: "class", 1: "instance", 2: "group"})
	if err != nil {
		return nil, err
	}
	env := &Environment{}
	if raw, ok := m[0]; ok {
		cm, err := decodeMap(raw, "class-map", keys{0: "class-id", 1: "vendor", 2: "model", 3: "layer", 4: "index"})
		if err != nil {
			return nil, err
		}
		if raw, ok := cm[0]; ok {
			if env.ClassID, err = decodeTyped(raw, "class-id", TagUUID, TagOID, TagBytes); err != nil {
				return nil, err
			}
		}
		for k, dst := range map[int64]*string{1: &env.Vendor, 2: &env.Model} {
			if raw, ok := cm[k]; ok {
				if err := strictcbor.Unmarshal(raw, dst); err != nil {
					return nil, errf("corim.decode", "class-map key %d: %v", k, err)
				}
			}
		}
		for k, dst := range map[int64]**uint64{3: &env.Layer, 4: &env.Index} {
			if raw, ok := cm[k]; ok {
				var v uint64
				if err := strictcbor.Unmarshal(raw, &v); err != nil {
					return nil, errf("corim.decode", "class-map key %d: %v", k, err)
				}
				*dst = &v
			}
		}
	}
	if raw, ok := m[1]; ok {
		if env.Instance, err = decodeTyped(raw, "instance-id", TagUEID, TagUUID, TagBytes); err != nil {
			return nil, err
		}
	}
	if raw, ok := m[2]; ok {
		if env.Group, err = decodeTyped(raw, "group-id", TagUUID, TagBytes); err != nil {
			return nil, err
		}
	}
	return env, nil
}

func decodeTyped(raw cbor.RawMessage, what string, allowed ...uint64) (*TypedBytes, error) {
	var t cbor.RawTag
	if err := strictcbor.Unmarshal(raw, &t); err != nil {
		return nil, errf("corim.decode", "%s: %v", what, err)
	}
	if !slices.Contains(allowed, t.Number) {
		return nil, errf("corim.unsupported", "%s with CBOR tag %d", what, t.Number)
	}
	var b []byte
	if err := strictcbor.Unmarshal(t.Content, &b); err != nil {
		return nil, errf("corim.decode", "%s: content is not a byte string", what)
	}
	if t.Number == TagUUID && len(b) != 16 {
		return nil, errf("corim.decode", "%s: UUID of %d bytes", what, len(b))
	}
	return &TypedBytes{Tag: t.Number, Value: b}, nil
}

func decodeMeasurement(b []byte) (*Measurement, error) {
	m, err := decodeMap(b, "measurement-map", keys{0: "mkey", 1: "mval"})
	if err != nil {
		return nil, err
	}
	out := &Measurement{}
	if raw, ok := m[0]; ok {
		if out.Key, err = decodeMKey(raw); err != nil {
			return nil, err
		}
	}
	raw, ok := m[1]
	if !ok {
		return nil, errf("corim.decode", "measurement-map has no mval")
	}
	mv, err := decodeMap(raw, "measurement-values-map", keys{1: "svn", 2: "digests", 4: "raw-value"})
	if err != nil {
		return nil, err
	}
	if raw, ok := mv[1]; ok {
		if out.SVN, err = decodeSVN(raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := mv[2]; ok {
		var list []cbor.RawMessage
		if err := strictcbor.Unmarshal(raw, &list); err != nil {
			return nil, errf("corim.decode", "digests: %v", err)
		}
		if len(list) == 0 {
			return nil, errf("corim.decode", "empty digests")
		}
		for i, d := range list {
			dg, err := decodeDigest(d)
			if err != nil {
				return nil, wrapAt(err, fmt.Sprintf("digest %d", i))
			}
			out.Digests = append(out.Digests, dg)
		}
	}
	if raw, ok := mv[4]; ok {
		rv, err := decodeTyped(raw, "raw-value", TagBytes)
		if err != nil {
			return nil, err
		}
		out.RawValue = rv.Value
	}
	if len(mv) == 0 {
		return nil, errf("corim.decode", "measurement-values-map is empty")
	}
	return out, nil
}

func decodeMKey(raw cbor.RawMessage) (MKey, error) {
	if tagged(raw) {
		t, err := decodeTyped(raw, "mkey", TagUUID)
		if err != nil {
			return MKey{}, err
		}
		return MKey{Kind: KeyUUID, UUID: t.Value}, nil
	}
	var u uint64
	if err := strictcbor.Unmarshal(raw, &u); err == nil {
		return MKey{Kind: KeyUint, Uint: u}, nil
	}
	var s string
	if err := strictcbor.Unmarshal(raw, &s); err != nil {
		return MKey{}, errf("corim.unsupported", "mkey is not a UUID (tag 37), uint or text")
	}
	return MKey{Kind: KeyText, Text: s}, nil
}

// tagged reports whether raw is a CBOR tag (major type 6): decoding a tag
// into a plain Go type would silently drop it.
func tagged(raw cbor.RawMessage) bool { return len(raw) > 0 && raw[0]>>5 == 6 }

func decodeSVN(raw cbor.RawMessage) (*SVN, error) {
	var v uint64
	if err := strictcbor.Unmarshal(raw, &v); err == nil && !tagged(raw) {
		return &SVN{Value: v}, nil
	}
	var t cbor.RawTag
	if err := strictcbor.Unmarshal(raw, &t); err != nil || (t.Number != TagSVN && t.Number != TagMinSVN) {
		return nil, errf("corim.decode", "svn is neither a uint nor tag %d/%d", TagSVN, TagMinSVN)
	}
	if err := strictcbor.Unmarshal(t.Content, &v); err != nil {
		return nil, errf("corim.decode", "svn: %v", err)
	}
	return &SVN{Value: v, Min: t.Number == TagMinSVN}, nil
}

func decodeDigest(raw cbor.RawMessage) (Digest, error) {
	var parts []cbor.RawMessage
	if err := strictcbor.Unmarshal(raw, &parts); err != nil || len(parts) != 2 {
		return Digest{}, errf("corim.decode", "digest is not [alg, value]")
	}
	var d Digest
	if tagged(parts[0]) || tagged(parts[1]) {
		return Digest{}, errf("corim.decode", "digest with a tagged algorithm or value")
	}
	if err := strictcbor.Unmarshal(parts[0], &d.Alg); err != nil {
		var name string
		if strictcbor.Unmarshal(parts[0], &name) == nil {
			return Digest{}, errf("corim.unsupported", "digest algorithm named %q: give the registry number", name)
		}
		return Digest{}, errf("corim.decode", "digest algorithm: %v", err)
	}
	if err := strictcbor.Unmarshal(parts[1], &d.Value); err != nil {
		return Digest{}, errf("corim.decode", "digest value: %v", err)
	}
	size := DigestSize(d.Alg)
	if size == 0 {
		return Digest{}, errf("corim.unsupported", "digest algorithm %d", d.Alg)
	}
	if len(d.Value) != size {
		return Digest{}, errf("corim.decode", "%s digest of %d bytes, want %d", AlgName(d.Alg), len(d.Value), size)
	}
	return d, nil
}

// HasMeasurement reports whether the CoRIM holds at least one reference
// value with a digest or raw value: one that can pin what runs.
func (c *CoRIM) HasMeasurement() bool {
	for _, t := range c.Triples() {
		for _, m := range t.Measurements {
			if len(m.Digests) > 0 || m.RawValue != nil {
				return true
			}
		}
	}
	return false
}

// checkContent refuses a CoRIM that cannot pin anything.
func (c *CoRIM) checkContent() error {
	if len(c.Tags) == 0 {
		return errf("corim.empty", "the CoRIM has no CoMID tags (Cocos's generator writes none when it drops every 48-byte SNP/TDX digest): it would accept any evidence")
	}
	if !c.HasMeasurement() {
		return errf("corim.empty", "no reference value carries a digest or raw value (an SVN alone pins nothing; Cocos's generator drops 48-byte measurements): it would accept any evidence")
	}
	for _, t := range c.Triples() {
		for i, m := range t.Measurements {
			if len(m.Digests) == 0 && m.RawValue == nil && m.Key.Kind != KeyUint && m.Key.Kind != KeyText {
				return errf("corim.unsupported", "measurement %d has only an SVN and no key saying what it applies to", i)
			}
		}
	}
	return nil
}

var sign1Prefix = []byte{0xd2, 0x84} // tag 18, array of 4

// IsSigned reports whether b looks like a COSE_Sign1 (tag 18).
func IsSigned(b []byte) bool { return bytes.HasPrefix(b, sign1Prefix) }
