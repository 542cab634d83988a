package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/uuid"
)

// The fake AMD chain's keys. They are TEST-ONLY: published in this
// repository, generated once with openssl, and trusted by nothing but a
// verifier explicitly given RootsPEM together with AllowSimulated. They are
// embedded as PEM and parsed on first use only (parsing RSA-4096 keys costs
// milliseconds, which no process that does not simulate SNP should pay).
var (
	//go:embed testdata/ark_test_only.pem
	arkKeyPEM []byte
	//go:embed testdata/ask_test_only.pem
	askKeyPEM []byte
	//go:embed testdata/vcek_test_only.pem
	vcekKeyPEM []byte
)

// amdKeys is the parsed fake key set.
type amdKeys struct {
	ark, ask *rsa.PrivateKey
	vcek     *ecdsa.PrivateKey
}

var (
	keysOnce sync.Once
	keys     amdKeys
	keysErr  error
)

// testOnlyKeys parses the embedded test-only keys, once per process.
func testOnlyKeys() (amdKeys, error) {
	keysOnce.Do(func() {
		var ark, ask, vcek crypto.Signer
		if ark, keysErr = parseKey("ARK", arkKeyPEM); keysErr != nil {
			return
		}
		if ask, keysErr = parseKey("ASK", askKeyPEM); keysErr != nil {
			return
		}
		if vcek, keysErr = parseKey("VCEK", vcekKeyPEM); keysErr != nil {
			return
		}
		var ok1, ok2, ok3 bool
		keys.ark, ok1 = ark.(*rsa.PrivateKey)
		keys.ask, ok2 = ask.(*rsa.PrivateKey)
		keys.vcek, ok3 = vcek.(*ecdsa.PrivateKey)
		if !ok1 || !ok2 || !ok3 {
			keysErr = fmt.Errorf("sim: test-only AMD keys: wrong key types")
		}
	})
	return keys, keysErr
}

func parseKey(role string, data []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("sim: test-only %s key: no PKCS#8 PEM block", role)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("sim: test-only %s key: %w", role, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("sim: test-only %s key: not a signer", role)
	}
	return s, nil
}

// Lifetimes of the fake certificates, as AMD issues them.
const (
	rootLifetime = 25 * 365 * 24 * time.Hour
	vcekLifetime = 7 * 365 * 24 * time.Hour
)

// amdChain is a certified fake ARK → ASK → VCEK chain for one simulated chip.
type amdChain struct {
	ark, ask, vcek *x509.Certificate
	vcekKey        *ecdsa.PrivateKey
}

// amdName is a distinguished name with the location fields go-sev-guest's
// verifier requires of every certificate in an AMD chain.
func amdName(cn, serial string) pkix.Name {
	return pkix.Name{
		CommonName:         cn,
		SerialNumber:       serial,
		Organization:       []string{"Advanced Micro Devices"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		Country:            []string{"US"},
	}
}

// newAMDChain certifies the test-only keys the way AMD's KDS shapes its
// certificates: ARK (self-signed) and ASK are RSA-PSS/SHA-384 CAs named
// "ARK-<line>" and "SEV-<line>" with the product line's VCEK CRL link; the
// VCEK ("SEV-VCEK", ECDSA P-384, no CRL link) carries the KDS extensions
// naming the product, the TCB and the chip ID.
func newAMDChain(product string, tcb kds.TCBParts, chipID []byte, now time.Time) (*amdChain, error) {
	k, err := testOnlyKeys()
	if err != nil {
		return nil, err
	}
	line := kds.ProductLineOfProductName(product)
	crl := kds.CrlLinkByKey(line, abi.VcekReportSigner)
	rootSerial := big.NewInt(0x5e5c0de)
	serialHex := fmt.Sprintf("%x", rootSerial)

	arkTmpl := &x509.Certificate{
		SerialNumber:          rootSerial,
		Subject:               amdName("ARK-"+line, serialHex),
		NotBefore:             now,
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
		CRLDistributionPoints: []string{crl},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	ark, err := certify(arkTmpl, arkTmpl, &k.ark.PublicKey, k.ark)
	if err != nil {
		return nil, fmt.Errorf("sim: certifying ARK: %w", err)
	}
	askTmpl := &x509.Certificate{
		SerialNumber:          rootSerial,
		Subject:               amdName("SEV-"+line, serialHex),
		NotBefore:             now,
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
		CRLDistributionPoints: []string{crl},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	ask, err := certify(askTmpl, ark, &k.ask.PublicKey, k.ark)
	if err != nil {
		return nil, fmt.Errorf("sim: certifying ASK: %w", err)
	}
	exts, err := vcekExtensions(product, tcb, chipID)
	if err != nil {
		return nil, err
	}
	vcekTmpl := &x509.Certificate{
		SerialNumber:       big.NewInt(0),
		Subject:            amdName("SEV-VCEK", "0"),
		NotAfter:           now.Add(vcekLifetime),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		ExtraExtensions:    exts,
	}
	vcek, err := certify(vcekTmpl, ask, &k.vcek.PublicKey, k.ask)
	if err != nil {
		return nil, fmt.Errorf("sim: certifying VCEK: %w", err)
	}
	return &amdChain{ark: ark, ask: ask, vcek: vcek, vcekKey: k.vcek}, nil
}

func certify(tmpl, parent *x509.Certificate, pub any, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// vcekExtensions are the KDS VCEK extensions: structure version 0, the
// product name (IA5), each security patch level, and the 64-byte chip ID.
func vcekExtensions(product string, tcb kds.TCBParts, chipID []byte) ([]pkix.Extension, error) {
	type ext struct {
		id  asn1.ObjectIdentifier
		val any
		ia5 bool
	}
	list := []ext{
		{kds.OidStructVersion, 0, false},
		{kds.OidProductName1, product, true},
		{kds.OidBlSpl, int(tcb.BlSpl), false},
		{kds.OidTeeSpl, int(tcb.TeeSpl), false},
		{kds.OidSnpSpl, int(tcb.SnpSpl), false},
		{kds.OidSpl4, int(tcb.Spl4), false},
		{kds.OidSpl5, int(tcb.Spl5), false},
		{kds.OidSpl6, int(tcb.Spl6), false},
		{kds.OidSpl7, int(tcb.Spl7), false},
		{kds.OidUcodeSpl, int(tcb.UcodeSpl), false},
		{kds.OidHwid, chipID, false},
	}
	out := make([]pkix.Extension, 0, len(list))
	for _, e := range list {
		var b []byte
		var err error
		if e.ia5 {
			b, err = asn1.MarshalWithParams(e.val, "ia5")
		} else {
			b, err = asn1.Marshal(e.val)
		}
		if err != nil {
			return nil, fmt.Errorf("sim: VCEK extension %v: %w", e.id, err)
		}
		out = append(out, pkix.Extension{Id: e.id, Value: b})
	}
	return out, nil
}

// certTable is the extended-request certificate table (VCEK, ASK, ARK) in
// the GHCB GUID-table format.
func (c *amdChain) certTable() []byte {
	t := abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: c.vcek.Raw},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: c.ask.Raw},
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: c.ark.Raw},
	}}
	return t.Marshal()
}

// sign signs a report's signed component with the VCEK: ECDSA P-384 over
// SHA-384, returned as the (R, S) pair the report stores.
func (c *amdChain) sign(signed []byte) (*big.Int, *big.Int, error) {
	h := sha512.Sum384(signed)
	return ecdsa.Sign(rand.Reader, c.vcekKey, h[:])
}
