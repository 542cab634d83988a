package corim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"
	"github.com/veraison/go-cose"
)

// encMode writes core deterministic CBOR (sorted map keys, shortest forms).
var encMode, encModeErr = cbor.CoreDetEncOptions().EncMode()

func marshal(v any) ([]byte, error) {
	if encModeErr != nil {
		return nil, fmt.Errorf("corim: CBOR encoder: %w", encModeErr)
	}
	return encMode.Marshal(v)
}

// Marshal encodes c as a bare unsigned-corim-map, as Cocos writes it (its
// reader does not take tag 501). It refuses what Load would refuse: a
// CoRIM without a reference measurement, a digest of the wrong size.
func Marshal(c *CoRIM) ([]byte, error) {
	if err := c.checkContent(); err != nil {
		return nil, err
	}
	m := map[int64]any{0: c.ID}
	if c.ID == "" {
		return nil, errors.New("corim: empty corim-id")
	}
	if c.Profile != "" {
		m[3] = cbor.Tag{Number: 32, Content: c.Profile}
	}
	if !c.NotAfter.IsZero() {
		v := map[int64]any{1: cbor.Tag{Number: TagEpochTime, Content: c.NotAfter.Unix()}}
		if !c.NotBefore.IsZero() {
			v[0] = cbor.Tag{Number: TagEpochTime, Content: c.NotBefore.Unix()}
		}
		m[4] = v
	}
	var tags []any
	for i := range c.Tags {
		b, err := marshalCoMID(&c.Tags[i])
		if err != nil {
			return nil, fmt.Errorf("corim: CoMID %d: %w", i, err)
		}
		tags = append(tags, cbor.Tag{Number: TagCoMID, Content: b})
	}
	m[1] = tags
	return marshal(m)
}

func marshalCoMID(c *CoMID) ([]byte, error) {
	if c.TagID == "" {
		return nil, errors.New("empty tag-id")
	}
	triples := map[int64]any{}
	var refs []any
	for _, t := range c.RefValues {
		env, err := envValue(&t.Env)
		if err != nil {
			return nil, err
		}
		var ms []any
		for _, m := range t.Measurements {
			v, err := measurementValue(&m)
			if err != nil {
				return nil, err
			}
			ms = append(ms, v)
		}
		refs = append(refs, []any{env, ms})
	}
	if len(refs) > 0 {
		triples[0] = refs
	}
	var aks []any
	for _, t := range c.AttestKeys {
		env, err := envValue(&t.Env)
		if err != nil {
			return nil, err
		}
		var ks []any
		for _, d := range t.Thumbprints {
			if err := checkDigest(d); err != nil {
				return nil, err
			}
			ks = append(ks, cbor.Tag{Number: TagThumbprint, Content: []any{d.Alg, d.Value}})
		}
		aks = append(aks, []any{env, ks})
	}
	if len(aks) > 0 {
		triples[3] = aks
	}
	id := map[int64]any{0: c.TagID}
	if c.TagVersion != 0 {
		id[1] = c.TagVersion
	}
	return marshal(map[int64]any{1: id, 4: triples})
}

func envValue(e *Environment) (map[int64]any, error) {
	class := map[int64]any{}
	if e.ClassID != nil {
		class[0] = cbor.Tag{Number: e.ClassID.Tag, Content: e.ClassID.Value}
	}
	if e.Vendor != "" {
		class[1] = e.Vendor
	}
	if e.Model != "" {
		class[2] = e.Model
	}
	if e.Layer != nil {
		class[3] = *e.Layer
	}
	if e.Index != nil {
		class[4] = *e.Index
	}
	env := map[int64]any{}
	if len(class) > 0 {
		env[0] = class
	}
	if e.Instance != nil {
		env[1] = cbor.Tag{Number: e.Instance.Tag, Content: e.Instance.Value}
	}
	if e.Group != nil {
		env[2] = cbor.Tag{Number: e.Group.Tag, Content: e.Group.Value}
	}
	if len(env) == 0 {
		return nil, errors.New("empty environment")
	}
	return env, nil
}

func measurementValue(m *Measurement) (map[int64]any, error) {
	mv := map[int64]any{}
	if m.SVN != nil {
		tag := uint64(TagSVN)
		if m.SVN.Min {
			tag = TagMinSVN
		}
		mv[1] = cbor.Tag{Number: tag, Content: m.SVN.Value}
	}
	if len(m.Digests) > 0 {
		var ds []any
		for _, d := range m.Digests {
			if err := checkDigest(d); err != nil {
				return nil, err
			}
			ds = append(ds, []any{d.Alg, d.Value})
		}
		mv[2] = ds
	}
	if m.RawValue != nil {
		mv[4] = cbor.Tag{Number: TagBytes, Content: m.RawValue}
	}
	if len(mv) == 0 {
		return nil, errors.New("measurement without a value")
	}
	out := map[int64]any{1: mv}
	switch m.Key.Kind {
	case KeyUUID:
		out[0] = cbor.Tag{Number: TagUUID, Content: m.Key.UUID}
	case KeyUint:
		out[0] = m.Key.Uint
	case KeyText:
		out[0] = m.Key.Text
	}
	return out, nil
}

func checkDigest(d Digest) error {
	size := DigestSize(d.Alg)
	if size == 0 {
		return fmt.Errorf("unsupported digest algorithm %d", d.Alg)
	}
	if len(d.Value) != size {
		return fmt.Errorf("%s digest of %d bytes, want %d", AlgName(d.Alg), len(d.Value), size)
	}
	return nil
}

// Sign encodes c and signs it as Cocos does (COSE_Sign1, tag 18; protected
// {alg, content type application/rim+cbor, corim-meta with the signer's
// name}; the payload is the bare unsigned map), except that alg follows the
// key: ES256/ES384/ES512 for P-256/P-384/P-521, EdDSA for Ed25519, PS256
// for RSA (Cocos labels every key ES256).
func Sign(c *CoRIM, key crypto.Signer, signerName string) ([]byte, error) {
	payload, err := Marshal(c)
	if err != nil {
		return nil, err
	}
	alg, err := algFor(key)
	if err != nil {
		return nil, err
	}
	signer, err := cose.NewSigner(alg, key)
	if err != nil {
		return nil, fmt.Errorf("corim: signing key: %w", err)
	}
	meta, err := marshal(map[int64]any{0: map[int64]any{0: signerName}})
	if err != nil {
		return nil, err
	}
	msg := cose.NewSign1Message()
	msg.Headers.Protected.SetAlgorithm(alg)
	msg.Headers.Protected[cose.HeaderLabelContentType] = ContentType
	msg.Headers.Protected[int64(8)] = meta
	msg.Payload = payload
	if err := msg.Sign(rand.Reader, nil, signer); err != nil {
		return nil, fmt.Errorf("corim: signing: %w", err)
	}
	return msg.MarshalCBOR()
}

func algFor(key crypto.Signer) (cose.Algorithm, error) {
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return cose.AlgorithmES256, nil
		case elliptic.P384():
			return cose.AlgorithmES384, nil
		case elliptic.P521():
			return cose.AlgorithmES512, nil
		}
		return 0, fmt.Errorf("corim: ECDSA curve %s not supported", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return cose.AlgorithmEdDSA, nil
	case *rsa.PublicKey:
		return cose.AlgorithmPS256, nil
	}
	return 0, fmt.Errorf("corim: signing key type %T not supported", key.Public())
}

// NewUUID returns a random UUID as tagged bytes (a class id, a measurement key).
func NewUUID() []byte {
	u := uuid.New()
	return u[:]
}
