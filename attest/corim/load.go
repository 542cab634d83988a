package corim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/cvmd/cvmd/attest/strictcbor"
)

// LoadOptions say which CoRIMs to trust.
type LoadOptions struct {
	// TrustedKeys verify a signed CoRIM: one of them must have made the
	// COSE_Sign1 signature.
	TrustedKeys []crypto.PublicKey
	// AllowUnsigned accepts an unsigned CoRIM, or a signed one when no
	// trusted key is given (its signature is then not checked). Without it
	// such a CoRIM is refused: anyone who can write the file could change
	// the reference values.
	AllowUnsigned bool
}

// Load decodes a CoRIM file, signed (COSE_Sign1, tag 18) or not, checks the
// signature as o says and refuses a CoRIM with no reference measurement.
// Every refusal is an *Error naming the check.
func Load(b []byte, o LoadOptions) (*CoRIM, error) {
	if !IsSigned(b) {
		if !o.AllowUnsigned {
			return nil, errf("corim.unsigned", "the CoRIM is not signed: give a signed CoRIM and its signer's key, or allow unsigned CoRIMs explicitly")
		}
		c, err := Parse(b)
		if err != nil {
			return nil, err
		}
		return c, c.checkContent()
	}
	// The strict decoder sees the whole message first: go-cose's own
	// decoder then only reads what passed our limits.
	var w struct {
		_           struct{} `cbor:",toarray"`
		Protected   []byte
		Unprotected cbor.RawMessage
		Payload     []byte
		Signature   []byte
	}
	var tag cbor.RawTag
	if err := strictcbor.Unmarshal(b, &tag); err != nil {
		return nil, errf("corim.decode", "COSE_Sign1: %v", err)
	}
	if err := strictcbor.Unmarshal(tag.Content, &w); err != nil {
		return nil, errf("corim.decode", "COSE_Sign1: %v", err)
	}
	msg := cose.NewSign1Message()
	if err := msg.UnmarshalCBOR(b); err != nil {
		return nil, errf("corim.decode", "COSE_Sign1: %v", err)
	}
	if ct, ok := msg.Headers.Protected[cose.HeaderLabelContentType]; !ok || ct != ContentType {
		return nil, errf("corim.decode", "COSE content type %v, want %q", ct, ContentType)
	}
	signer, err := decodeMeta(msg.Headers.Protected[int64(8)])
	if err != nil {
		return nil, err
	}
	signed := false
	switch {
	case len(o.TrustedKeys) > 0:
		alg, err := msg.Headers.Protected.Algorithm()
		if err != nil {
			return nil, errf("corim.signature", "protected header: %v", err)
		}
		var errs []error
		for _, k := range o.TrustedKeys {
			v, err := cose.NewVerifier(alg, k)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s key: %v", keyKind(k), err))
				continue
			}
			if err := msg.Verify(nil, v); err != nil {
				errs = append(errs, fmt.Errorf("%s key: %v", keyKind(k), err))
				continue
			}
			signed = true
			break
		}
		if !signed {
			return nil, &Error{Check: "corim.signature", Err: fmt.Errorf("no trusted key verifies the %v signature: %w", alg, errors.Join(errs...))}
		}
	case !o.AllowUnsigned:
		return nil, errf("corim.signature", "the CoRIM is signed but no trusted key was given to check it")
	}
	c, err := Parse(msg.Payload)
	if err != nil {
		return nil, err
	}
	c.Signed, c.Signer = signed, signer
	return c, c.checkContent()
}

// decodeMeta reads the signer name from corim-meta (protected header 8):
// the CBOR-encoded {0: signer-map {0: name, 1: uri}, 1: validity}, carried
// as a byte string (as veraison/corim and Cocos write it) or a map.
func decodeMeta(v any) (string, error) {
	if v == nil {
		return "", errf("corim.decode", "protected header has no corim-meta (8)")
	}
	var raw []byte
	switch m := v.(type) {
	case []byte:
		raw = m
	default:
		b, err := cbor.Marshal(m)
		if err != nil {
			return "", errf("corim.decode", "corim-meta: %v", err)
		}
		raw = b
	}
	meta, err := decodeMap(raw, "corim-meta", keys{0: "signer", 1: "signature-validity"})
	if err != nil {
		return "", err
	}
	if _, ok := meta[1]; ok {
		return "", errf("corim.unsupported", "corim-meta signature-validity")
	}
	sm, err := decodeMap(meta[0], "corim-signer-map", keys{0: "signer-name", 1: "signer-uri"})
	if err != nil {
		return "", err
	}
	var name string
	if raw, ok := sm[0]; ok {
		if err := strictcbor.Unmarshal(raw, &name); err != nil {
			return "", errf("corim.decode", "signer-name: %v", err)
		}
	}
	return name, nil
}

func keyKind(k crypto.PublicKey) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", k)
}

// ParsePublicKeys reads PEM public keys (PKIX "PUBLIC KEY" blocks, or
// certificates) that may sign CoRIMs.
func ParsePublicKeys(pemData []byte) ([]crypto.PublicKey, error) {
	var out []crypto.PublicKey
	for {
		var blk *pem.Block
		blk, pemData = pem.Decode(pemData)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("corim: trusted key: %w", err)
			}
			out = append(out, k)
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("corim: trusted key certificate: %w", err)
			}
			out = append(out, c.PublicKey)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("corim: no PEM public key or certificate found")
	}
	return out, nil
}
