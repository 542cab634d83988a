package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest/intelpcs"
)

// A simulated Intel TDX: quotes (QuoteV4) over any REPORT_DATA, signed by
// a quoting-enclave attestation key that a QE report certifies, the QE
// report signed by a PCK key whose certificate chains to a test-only
// "Intel SGX Root CA" made here, plus the Intel PCS collateral (TCB info, QE
// identity, CRLs) for that chain, signed by a test-only TCB signing key.
// go-tdx-guest's verifier checks all of it exactly as it checks Intel's;
// only the root differs, which is how a verifier tells it is simulated.

// TDXOptions shape the simulated TD and platform. Zero values take defaults.
type TDXOptions struct {
	MRTD          [48]byte // zero: DefaultMRTD()
	RTMRs         [4][48]byte
	MRSEAM        [48]byte // zero: SHA-384("cvmd simulated TDX module")
	MRConfigID    [48]byte
	MROwner       [48]byte
	MROwnerConfig [48]byte
	TDAttributes  uint64 // bit 0 is DEBUG
	XFAM          uint64 // 0: 0x602e7
	// TCBStatus is what the collateral says of this platform's TCB
	// ("" = UpToDate; "OutOfDate" makes verifiers refuse it).
	TCBStatus string
	// Now is when the certificates and collateral are issued; zero: time.Now().
	Now time.Time
}

// DefaultMRTD is the simulated TD's MRTD unless TDXOptions says otherwise.
func DefaultMRTD() [48]byte { return sha512.Sum384([]byte("cvmd simulated TD")) }

// The platform the collateral describes, as in go-tdx-guest's sample data.
const (
	simFMSPC = "50806f000000"
	simPCEID = "0000"
)

var (
	simCPUSVN   = [16]byte{5, 5, 2, 2, 3, 1, 0, 3}
	simTeeTCB   = [16]byte{3, 0, 5}
	simQEVendor = []byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}
	simQESigner = sha256.Sum256([]byte("cvmd simulated quoting enclave signer"))
)

const (
	simPCESVN  = 11
	simQESVN   = 4
	simProdID  = 2
	simRootCRL = "https://sim.cvmd.invalid/IntelSGXRootCA.der"
)

// TDX is a simulated TDX quote provider (go-tdx-guest client.QuoteProvider).
type TDX struct {
	body       *tdxpb.TDQuoteBody // template; REPORT_DATA set per quote
	header     *tdxpb.Header
	ak         *ecdsa.PrivateKey // the QE's attestation key
	akRaw      []byte            // its public key, X ‖ Y
	certData   *tdxpb.CertificationData
	rootPEM    []byte
	collateral []byte
}

// NewTDX builds the test-only Intel chain and collateral for a simulated TD.
func NewTDX(o TDXOptions) (*TDX, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.MRTD == ([48]byte{}) {
		o.MRTD = DefaultMRTD()
	}
	if o.MRSEAM == ([48]byte{}) {
		o.MRSEAM = sha512.Sum384([]byte("cvmd simulated TDX module"))
	}
	if o.XFAM == 0 {
		o.XFAM = 0x602e7
	}
	if o.TCBStatus == "" {
		o.TCBStatus = string(pcs.TcbComponentStatusUpToDate)
	}
	ch, err := newIntelChain(o.Now)
	if err != nil {
		return nil, err
	}
	t := &TDX{rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ch.root.Raw})}
	if t.collateral, err = ch.collateral(o.Now, o.TCBStatus); err != nil {
		return nil, err
	}
	if t.ak, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	le := func(v uint64) []byte { b := make([]byte, 8); putLE(b, v); return b }
	rtmrs := make([][]byte, 4)
	for i := range rtmrs {
		rtmrs[i] = append([]byte{}, o.RTMRs[i][:]...)
	}
	t.body = &tdxpb.TDQuoteBody{
		TeeTcbSvn: simTeeTCB[:], MrSeam: o.MRSEAM[:], MrSignerSeam: make([]byte, 48), SeamAttributes: make([]byte, 8),
		TdAttributes: le(o.TDAttributes), Xfam: le(o.XFAM), MrTd: o.MRTD[:], MrConfigId: o.MRConfigID[:],
		MrOwner: o.MROwner[:], MrOwnerConfig: o.MROwnerConfig[:], Rtmrs: rtmrs, ReportData: make([]byte, 64),
	}
	t.header = &tdxpb.Header{
		Version: abi.QuoteVersion, AttestationKeyType: abi.AttestationKeyType, TeeType: abi.TeeTDX,
		QeSvn: []byte{simQESVN, 0}, PceSvn: []byte{simPCESVN, 0}, QeVendorId: simQEVendor, UserData: make([]byte, 20),
	}
	// The QE report certifies the attestation key: its REPORT_DATA is
	// SHA-256(attestation key ‖ QE auth data), and the PCK key signs it.
	akRaw, err := rawPub(&t.ak.PublicKey)
	if err != nil {
		return nil, err
	}
	t.akRaw = akRaw
	authData := make([]byte, 32)
	for i := range authData {
		authData[i] = byte(i)
	}
	h := sha256.Sum256(append(append([]byte{}, akRaw...), authData...))
	qe := &tdxpb.EnclaveReport{
		CpuSvn: simCPUSVN[:], MiscSelect: 0, Reserved1: make([]byte, 28), Attributes: append([]byte{0x11}, make([]byte, 15)...),
		MrEnclave: make([]byte, 32), Reserved2: make([]byte, 32), MrSigner: simQESigner[:], Reserved3: make([]byte, 96),
		IsvProdId: simProdID, IsvSvn: simQESVN, Reserved4: make([]byte, 60), ReportData: append(h[:], make([]byte, 32)...),
	}
	qeRaw, err := abi.EnclaveReportToAbiBytes(qe)
	if err != nil {
		return nil, fmt.Errorf("sim: QE report: %w", err)
	}
	qeSig, err := rawSign(ch.pckKey, qeRaw)
	if err != nil {
		return nil, err
	}
	chain := append(append(pemCert(ch.pck), pemCert(ch.platform)...), pemCert(ch.root)...)
	qeCert := &tdxpb.QEReportCertificationData{
		QeReport: qe, QeReportSignature: qeSig,
		QeAuthData:              &tdxpb.QeAuthData{ParsedDataSize: uint32(len(authData)), Data: authData},
		PckCertificateChainData: &tdxpb.PCKCertificateChainData{CertificateDataType: 5, Size: uint32(len(chain)), PckCertChain: chain},
	}
	// Size of the QE report certification data once encoded.
	qeCertSize := 0x180 + 0x40 + 2 + len(authData) + 6 + len(chain)
	t.certData = &tdxpb.CertificationData{
		CertificateDataType:       6,
		Size:                      uint32(qeCertSize),
		QeReportCertificationData: qeCert,
	}
	if _, err := t.GetRawQuote([64]byte{}); err != nil {
		return nil, fmt.Errorf("sim: TDX quote: %w", err)
	}
	return t, nil
}

// IsSupported reports that the simulated TDX works (nil).
func (*TDX) IsSupported() error { return nil }

// GetRawQuote returns a QuoteV4 over reportData.
func (t *TDX) GetRawQuote(reportData [64]byte) ([]uint8, error) {
	body := proto.Clone(t.body).(*tdxpb.TDQuoteBody)
	body.ReportData = reportData[:]
	hb, err := abi.HeaderToAbiBytes(t.header)
	if err != nil {
		return nil, err
	}
	bb, err := abi.TdQuoteBodyToAbiBytes(body)
	if err != nil {
		return nil, err
	}
	sig, err := rawSign(t.ak, append(hb, bb...))
	if err != nil {
		return nil, err
	}
	q := &tdxpb.QuoteV4{
		Header: t.header, TdQuoteBody: body,
		SignedDataSize: uint32(0x80 + 6 + t.certData.GetSize()),
		SignedData:     &tdxpb.Ecdsa256BitQuoteV4AuthData{Signature: sig, EcdsaAttestationKey: t.akRaw, CertificationData: t.certData},
	}
	return abi.QuoteToAbiBytes(q)
}

// RootPEM is the test-only "Intel SGX Root CA" that verifiers must be given
// (with simulated evidence allowed) to accept this platform.
func (t *TDX) RootPEM() []byte { return t.rootPEM }

// Collateral is the Intel PCS collateral for this platform, as an offline
// intelpcs bundle.
func (t *TDX) Collateral() []byte { return t.collateral }

func putLE(b []byte, v uint64) {
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
}

// rawPub is the attestation key as quotes carry it: X ‖ Y, without the
// uncompressed-point prefix byte.
func rawPub(k *ecdsa.PublicKey) ([]byte, error) {
	b, err := k.Bytes()
	if err != nil {
		return nil, err
	}
	return b[1:], nil
}

// rawSign signs SHA-256(msg) and returns r ‖ s, as Intel's structures carry it.
func rawSign(k *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// intelChain is the test-only PKI: root → PCK platform CA → PCK leaf, and
// root → TCB signing.
type intelChain struct {
	root, platform, pck, tcb             *x509.Certificate
	rootKey, platformKey, pckKey, tcbKey *ecdsa.PrivateKey
}

func newIntelChain(now time.Time) (*intelChain, error) {
	c := &intelChain{}
	var err error
	for _, k := range []**ecdsa.PrivateKey{&c.rootKey, &c.platformKey, &c.pckKey, &c.tcbKey} {
		if *k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	name := func(cn string) pkix.Name {
		return pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}}
	}
	notBefore, notAfter := now.Add(-24*time.Hour), now.Add(10*365*24*time.Hour)
	ca := func(serial int64, cn string, ski []byte) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: name(cn), NotBefore: notBefore, NotAfter: notAfter,
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			SubjectKeyId: ski, CRLDistributionPoints: []string{simRootCRL},
		}
	}
	mk := func(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			return nil, fmt.Errorf("sim: certificate %q: %w", tmpl.Subject.CommonName, err)
		}
		return x509.ParseCertificate(der)
	}
	rootT := ca(1, "Intel SGX Root CA", []byte("cvmd-sim-root"))
	if c.root, err = mk(rootT, rootT, &c.rootKey.PublicKey, c.rootKey); err != nil {
		return nil, err
	}
	platT := ca(2, "Intel SGX PCK Platform CA", []byte("cvmd-sim-platform"))
	platT.CRLDistributionPoints = []string{pcs.PckCrlURL("platform")}
	if c.platform, err = mk(platT, c.root, &c.platformKey.PublicKey, c.rootKey); err != nil {
		return nil, err
	}
	tcbT := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: name("Intel SGX TCB Signing"), NotBefore: notBefore, NotAfter: notAfter,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		SubjectKeyId: []byte("cvmd-sim-tcb"), CRLDistributionPoints: []string{simRootCRL},
	}
	if c.tcb, err = mk(tcbT, c.root, &c.tcbKey.PublicKey, c.rootKey); err != nil {
		return nil, err
	}
	sgx, err := sgxExtension()
	if err != nil {
		return nil, err
	}
	// Six extensions, as Intel's PCK certificates have: AKI, CRL
	// distribution points, SKI, key usage, basic constraints, SGX.
	pckT := &x509.Certificate{
		SerialNumber: big.NewInt(4), Subject: name("Intel SGX PCK Certificate"), NotBefore: notBefore, NotAfter: notAfter,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		SubjectKeyId: []byte("cvmd-sim-pck"), CRLDistributionPoints: []string{pcs.PckCrlURL("platform")},
		ExtraExtensions: []pkix.Extension{{Id: pcs.OidSgxExtension, Value: sgx}},
	}
	if c.pck, err = mk(pckT, c.platform, &c.pckKey.PublicKey, c.platformKey); err != nil {
		return nil, err
	}
	return c, nil
}

// sgxExtension encodes the SGX extension of a PCK certificate: PPID, TCB
// (16 component SVNs, PCESVN, CPUSVN), PCE-ID, FMSPC and SGX type.
func sgxExtension() ([]byte, error) {
	type pair struct {
		ID  asn1.ObjectIdentifier
		Val any
	}
	fmspc, _ := hex.DecodeString(simFMSPC)
	pceid, _ := hex.DecodeString(simPCEID)
	var tcb []pair
	for i := 0; i < 16; i++ {
		oid := append(append(asn1.ObjectIdentifier{}, pcs.OidTCB...), i+1)
		tcb = append(tcb, pair{oid, int(simCPUSVN[i])})
	}
	tcb = append(tcb, pair{pcs.OidPCESvn, simPCESVN}, pair{pcs.OidCPUSvn, simCPUSVN[:]})
	ppid := sha256.Sum256([]byte("cvmd simulated PPID"))
	return asn1.Marshal([]pair{
		{pcs.OidPPID, ppid[:16]},
		{pcs.OidTCB, tcb},
		{pcs.OidPCEID, pceid},
		{pcs.OidFMSPC, fmspc},
		{asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}, asn1.Enumerated(0)}, // SGX type: standard
	})
}

type tcbComponent struct {
	SVN byte `json:"svn"`
}

type tcbLevel struct {
	TCB struct {
		SGX    []tcbComponent `json:"sgxtcbcomponents,omitempty"`
		PCESVN uint16         `json:"pcesvn,omitempty"`
		TDX    []tcbComponent `json:"tdxtcbcomponents,omitempty"`
		ISVSVN uint32         `json:"isvsvn,omitempty"`
	} `json:"tcb"`
	Date   string `json:"tcbDate"`
	Status string `json:"tcbStatus"`
}

func components(b []byte) []tcbComponent {
	out := make([]tcbComponent, len(b))
	for i, v := range b {
		out[i].SVN = v
	}
	return out
}

// collateral signs TCB info and QE identity for the chain's platform and
// issues the two CRLs, all valid for 30 days from now.
func (c *intelChain) collateral(now time.Time, status string) ([]byte, error) {
	issued, next := now.Add(-time.Hour).UTC().Truncate(time.Second), now.Add(30*24*time.Hour).UTC().Truncate(time.Second)
	var lvl tcbLevel
	lvl.TCB.SGX, lvl.TCB.PCESVN, lvl.TCB.TDX = components(simCPUSVN[:]), simPCESVN, components(simTeeTCB[:])
	lvl.Date, lvl.Status = "2024-01-01T00:00:00Z", status
	tcbInfo, err := json.Marshal(map[string]any{
		"id": "TDX", "version": 3, "issueDate": issued, "nextUpdate": next, "fmspc": simFMSPC, "pceId": simPCEID,
		"tcbType": 0, "tcbEvaluationDataNumber": 17,
		"tdxModule": map[string]string{"mrsigner": hex.EncodeToString(make([]byte, 48)), "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
		"tcbLevels": []tcbLevel{lvl},
	})
	if err != nil {
		return nil, err
	}
	var qeLvl tcbLevel
	qeLvl.TCB.ISVSVN, qeLvl.Date, qeLvl.Status = simQESVN, "2024-01-01T00:00:00Z", "UpToDate"
	qeID, err := json.Marshal(map[string]any{
		"id": "TD_QE", "version": 2, "issueDate": issued, "nextUpdate": next, "tcbEvaluationDataNumber": 17,
		"miscselect": "00000000", "miscselectMask": "FFFFFFFF",
		"attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner": hex.EncodeToString(simQESigner[:]), "isvprodid": simProdID, "tcbLevels": []tcbLevel{qeLvl},
	})
	if err != nil {
		return nil, err
	}
	signed := func(field string, raw []byte) ([]byte, error) {
		sig, err := rawSign(c.tcbKey, raw)
		if err != nil {
			return nil, err
		}
		return []byte(fmt.Sprintf(`{%q:%s,"signature":%q}`, field, raw, hex.EncodeToString(sig))), nil
	}
	tcbBody, err := signed("tcbInfo", tcbInfo)
	if err != nil {
		return nil, err
	}
	qeBody, err := signed("enclaveIdentity", qeID)
	if err != nil {
		return nil, err
	}
	crl := func(issuer *x509.Certificate, key *ecdsa.PrivateKey) ([]byte, error) {
		return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: issued, NextUpdate: next}, issuer, key)
	}
	pckCRL, err := crl(c.platform, c.platformKey)
	if err != nil {
		return nil, fmt.Errorf("sim: PCK CRL: %w", err)
	}
	rootCRL, err := crl(c.root, c.rootKey)
	if err != nil {
		return nil, fmt.Errorf("sim: root CRL: %w", err)
	}
	chain := func(signer *x509.Certificate) []string {
		return []string{url.QueryEscape(string(append(pemCert(signer), pemCert(c.root)...)))}
	}
	var b intelpcs.Bundle
	b.Add(pcs.TcbInfoURL(simFMSPC), map[string][]string{pcs.TcbInfoIssuerChainPhrase: chain(c.tcb)}, tcbBody)
	b.Add(pcs.QeIdentityURL(), map[string][]string{pcs.SgxQeIdentityIssuerChainPhrase: chain(c.tcb)}, qeBody)
	b.Add(pcs.PckCrlURL("platform"), map[string][]string{pcs.SgxPckCrlIssuerChainPhrase: chain(c.platform)}, pckCRL)
	b.Add(simRootCRL, nil, rootCRL)
	return b.Marshal()
}
