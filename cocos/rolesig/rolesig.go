// Package rolesig signs and verifies the role strings that authenticate CLI
// requests to the agent, exactly as Cocos does: the signed message is only
// the role ("algorithm-provider", "data-provider", "consumer"); RSA keys sign
// SHA-256(role) with PKCS#1 v1.5, ECDSA keys sign SHA-256(role) as ASN.1 DER,
// Ed25519 keys sign the raw role bytes. Public keys travel as PKIX DER.
//
// Such a signature is a bearer credential: seen once, it works for every
// computation that declares the key, forever. Beyond Cocos, the package also
// signs and verifies challenge messages (ChallengeMessage: a fixed label, the
// role, the computation id and a nonce the agent offered), which bind a
// signature to one request of one computation; the agent decides when they
// are required (docs/agent.md, "Role signatures").
//
// It also reads and writes key files in the PEM formats Cocos's CLI uses.
// It does not decide which key may do what: the agent does.
//
// Imported by the agent, the CLI and the development manager; it imports
// only the standard library.
package rolesig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
)

// Role strings, which are also the values of the user-id metadata.
const (
	AlgorithmProvider = "algorithm-provider"
	DataProvider      = "data-provider"
	Consumer          = "consumer"
)

// Sign signs role with key and returns the signature.
func Sign(key crypto.Signer, role string) ([]byte, error) { return signMessage(key, []byte(role)) }

// signMessage signs msg the way Cocos signs a role: RSA PKCS#1 v1.5 and
// ECDSA ASN.1 over SHA-256(msg), Ed25519 over msg itself.
func signMessage(key crypto.Signer, msg []byte) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		d := sha256.Sum256(msg)
		return rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
	case *ecdsa.PrivateKey:
		d := sha256.Sum256(msg)
		return ecdsa.SignASN1(rand.Reader, k, d[:])
	case ed25519.PrivateKey:
		return ed25519.Sign(k, msg), nil
	default:
		return nil, fmt.Errorf("rolesig: unsupported key type %T", key)
	}
}

// SignBase64 is Sign with the signature in standard base64, the form of the
// signature metadata.
func SignBase64(key crypto.Signer, role string) (string, error) {
	sig, err := Sign(key, role)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// Verify reports whether sig is pub's signature of role.
func Verify(pub crypto.PublicKey, role string, sig []byte) bool {
	return verifyMessage(pub, []byte(role), sig)
}

func verifyMessage(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) == nil
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, d[:], sig)
	case ed25519.PublicKey:
		return len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig)
	default:
		return false
	}
}

// ChallengeNonceSize is the size of an agent's challenge nonce.
const ChallengeNonceSize = 32

// challengeLabel starts every challenge message, so that it can never be
// taken for a Cocos role signature (whose message is the bare role) or for
// anything else the key signs.
const challengeLabel = "cvmd role challenge v1"

// ChallengeMessage returns the bytes a challenge-mode signature covers: the
// label, then the role, the computation id and the nonce, each preceded by
// its length (uint32, big-endian), so no two different triples give the
// same bytes.
func ChallengeMessage(role, computationID string, nonce []byte) []byte {
	b := make([]byte, 0, len(challengeLabel)+12+len(role)+len(computationID)+len(nonce))
	b = append(b, challengeLabel...)
	for _, f := range [][]byte{[]byte(role), []byte(computationID), nonce} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// SignChallenge signs the challenge message of role, computationID and
// nonce with key.
func SignChallenge(key crypto.Signer, role, computationID string, nonce []byte) ([]byte, error) {
	return signMessage(key, ChallengeMessage(role, computationID, nonce))
}

// VerifyChallenge reports whether sig is pub's signature of the challenge
// message of role, computationID and nonce.
func VerifyChallenge(pub crypto.PublicKey, role, computationID string, nonce, sig []byte) bool {
	return verifyMessage(pub, ChallengeMessage(role, computationID, nonce), sig)
}

// ParsePublicKey parses a PKIX DER public key of a supported type.
func ParsePublicKey(der []byte) (crypto.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("rolesig: parsing public key: %v", err)
	}
	switch k.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("rolesig: unsupported public key type %T", k)
}

// ParsePublicKeyPEM reads a "PUBLIC KEY" PEM block and returns the key and
// its PKIX DER bytes (what a manifest carries).
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, []byte, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, nil, errors.New("rolesig: no PEM block in public key file")
	}
	if b.Type != "PUBLIC KEY" {
		return nil, nil, fmt.Errorf("rolesig: PEM block is %q, want PUBLIC KEY", b.Type)
	}
	k, err := ParsePublicKey(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return k, b.Bytes, nil
}

// ParsePrivateKeyPEM reads a private key the way Cocos's CLI does: a
// "PRIVATE KEY" block is PKCS#8, else PKCS#1 (Cocos writes RSA keys as
// PKCS#1 under that type); an "EC PRIVATE KEY" block is SEC 1; an
// "RSA PRIVATE KEY" block is PKCS#1. Other types are refused.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("rolesig: no PEM block in private key file")
	}
	var k any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		if k, err = x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		}
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("rolesig: unsupported PEM block type %q", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("rolesig: parsing %s: %v", b.Type, err)
	}
	switch s := k.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
		return s.(crypto.Signer), nil
	}
	return nil, fmt.Errorf("rolesig: unsupported private key type %T", k)
}

// KeyTypes are the kinds NewKey makes.
var KeyTypes = []string{"rsa", "ecdsa", "ed25519"}

// NewKey makes a key pair of kind (rsa, ecdsa or ed25519) and returns the
// private and public key in Cocos's PEM formats: RSA-4096 as PKCS#1 under
// "PRIVATE KEY" (sic, as Cocos), ECDSA P-256 as SEC 1 under "EC PRIVATE
// KEY", Ed25519 as PKCS#8 under "PRIVATE KEY"; the public key always PKIX
// under "PUBLIC KEY".
func NewKey(kind string) (privPEM, pubPEM []byte, err error) {
	var priv crypto.Signer
	var der []byte
	var typ string
	switch kind {
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 4096)
		if err != nil {
			return nil, nil, err
		}
		priv, der, typ = k, x509.MarshalPKCS1PrivateKey(k), "PRIVATE KEY"
	case "ecdsa":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		if der, err = x509.MarshalECPrivateKey(k); err != nil {
			return nil, nil, err
		}
		priv, typ = k, "EC PRIVATE KEY"
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		if der, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
			return nil, nil, err
		}
		priv, typ = k, "PRIVATE KEY"
	default:
		return nil, nil, fmt.Errorf("rolesig: unknown key type %q (want rsa, ecdsa or ed25519)", kind)
	}
	pub, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), nil
}
