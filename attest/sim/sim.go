// Package sim provides the simulated platforms cvmd uses where there is no
// hardware: the go-tpm-tools TPM 2.0 simulator (Microsoft's reference TPM,
// cgo, linked against libcrypto) and a simulated SEV-SNP whose reports are
// signed by a fake, test-only AMD chain (ARK → ASK → VCEK) certified from
// keys committed in testdata/ (amdchain.go).
//
// Everything sim produces is evidence of nothing: the attester marks its
// tokens simulated, the first PCR 15 event says so, and the SNP chain does not
// lead to a real AMD root, so attest/verify refuses it unless explicitly told
// to allow simulated evidence.
//
// sim deliberately does not use go-sev-guest's testing package: it would
// parse five RSA-4096/ECDSA keys at package init in every cvmd process (tens
// of milliseconds on each child spawn, paid twice since libcontainer re-execs
// the binary). The fake keys here are parsed on first use only.
// The TPM simulator is process-global: one OpenTPM at a time per process.
//
// Only the attestation child and tests import sim.
package sim

import (
	"crypto/sha512"
	"encoding/pem"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-tpm-tools/simulator"
	"google.golang.org/protobuf/proto"
)

// OpenTPM starts the TPM simulator. It blocks while another one is open in
// this process. Close the result to stop it.
func OpenTPM() (io.ReadWriteCloser, error) {
	s, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("sim: starting TPM simulator: %w", err)
	}
	return s, nil
}

// DefaultTCB is the TCB the simulated chip reports (and its VCEK certifies).
var DefaultTCB = kds.TCBParts{BlSpl: 3, TeeSpl: 0, SnpSpl: 8, UcodeSpl: 115}

// DefaultPolicy is the guest policy of the simulated VM: SMT allowed, no
// debug, ABI 0.0 (0x30000, the policy Cocos's examples use).
const DefaultPolicy = 0x30000

// DefaultMeasurement is the launch MEASUREMENT of the simulated VM unless
// SNPOptions says otherwise.
func DefaultMeasurement() [48]byte {
	return sha512.Sum384([]byte("cvmd simulated launch measurement"))
}

// SNPOptions shape the simulated chip and VM. Zero values take the defaults.
type SNPOptions struct {
	Measurement [48]byte           // zero: DefaultMeasurement()
	Policy      uint64             // 0: DefaultPolicy
	TCB         *kds.TCBParts      // nil: DefaultTCB
	GuestSVN    uint32             //
	HostData    [32]byte           //
	VMPL        uint32             //
	Now         time.Time          // certificate creation time; zero: time.Now()
	Product     *sevsnp.SevProduct // nil: Milan B1
}

// SNP is a simulated SEV-SNP report interface: a go-sev-guest
// client.QuoteProvider producing signed reports for any REPORT_DATA.
type SNP struct {
	chain   *amdChain
	product *sevsnp.SevProduct
	base    *sevsnp.Report
	certs   []byte // extended cert table appended to every report
}

// NewSNP builds the test-only AMD chain for a simulated chip.
func NewSNP(o SNPOptions) (*SNP, error) {
	if o.Product == nil {
		o.Product = abi.DefaultSevProduct()
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	tcbParts := DefaultTCB
	if o.TCB != nil {
		tcbParts = *o.TCB
	}
	tcb, err := kds.ComposeTCBParts(tcbParts)
	if err != nil {
		return nil, fmt.Errorf("sim: TCB: %w", err)
	}
	if o.Measurement == ([48]byte{}) {
		o.Measurement = DefaultMeasurement()
	}
	if o.Policy == 0 {
		o.Policy = DefaultPolicy
	}
	chipID := sha512.Sum512([]byte("cvmd simulated SEV-SNP chip"))
	chain, err := newAMDChain(kds.ProductName(o.Product), tcbParts, chipID[:], o.Now)
	if err != nil {
		return nil, err
	}
	certs, err := abi.ExtendPlatformCertTable(chain.certTable(), &abi.ExtraPlatformInfo{
		Size:      abi.ExtraPlatformInfoV0Size,
		Cpuid1Eax: abi.MaskedCpuid1EaxFromSevProduct(o.Product),
	})
	if err != nil {
		return nil, fmt.Errorf("sim: certificate table: %w", err)
	}
	fms := abi.MaskedCpuid1EaxFromSevProduct(o.Product)
	family, model, stepping := abi.FmsFromCpuid1Eax(fms)
	base := &sevsnp.Report{
		Version:         3,
		GuestSvn:        o.GuestSVN,
		Policy:          o.Policy,
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		Vmpl:            o.VMPL,
		SignatureAlgo:   uint32(abi.SignEcdsaP384Sha384),
		CurrentTcb:      uint64(tcb),
		PlatformInfo:    1, // SMT enabled
		ReportData:      make([]byte, abi.ReportDataSize),
		Measurement:     o.Measurement[:],
		HostData:        o.HostData[:],
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        make([]byte, abi.ReportIDSize),
		ReportIdMa:      make([]byte, abi.ReportIDMASize),
		ReportedTcb:     uint64(tcb),
		ChipId:          chipID[:],
		CommittedTcb:    uint64(tcb),
		CurrentBuild:    20,
		CurrentMinor:    55,
		CurrentMajor:    1,
		CommittedBuild:  20,
		CommittedMinor:  55,
		CommittedMajor:  1,
		LaunchTcb:       uint64(tcb),
		Cpuid1EaxFms:    abi.FmsToCpuid1Eax(family, model, stepping),
		Signature:       make([]byte, abi.SignatureSize),
	}
	return &SNP{chain: chain, product: o.Product, base: base, certs: certs}, nil
}

// IsSupported reports true: the simulated interface always works.
func (*SNP) IsSupported() bool { return true }

// Product returns the simulated chip's product.
func (s *SNP) Product() *sevsnp.SevProduct { return s.product }

// GetRawQuote returns a signed report over reportData followed by the
// extended certificate table (VCEK, ASK, ARK), as configfs-tsm returns it.
func (s *SNP) GetRawQuote(reportData [64]byte) ([]byte, error) {
	r := proto.Clone(s.base).(*sevsnp.Report)
	r.ReportData = reportData[:]
	raw, err := abi.ReportToAbiBytes(r)
	if err != nil {
		return nil, fmt.Errorf("sim: encoding report: %w", err)
	}
	rr, ss, err := s.chain.sign(abi.SignedComponent(raw))
	if err != nil {
		return nil, fmt.Errorf("sim: signing report: %w", err)
	}
	if err := abi.SetSignature(rr, ss, raw); err != nil {
		return nil, fmt.Errorf("sim: setting signature: %w", err)
	}
	return append(raw, s.certs...), nil
}

// RootsPEM returns the test-only ARK and ASK as PEM, the "AMD bundle" a
// verifier must be given (with AllowSimulated) to accept this chip.
func (s *SNP) RootsPEM() []byte {
	var out []byte
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.chain.ask.Raw})...)
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.chain.ark.Raw})...)
	return out
}

// LazySNP is an SNP built on first use: parsing the test-only keys and
// certifying the chain costs tens of milliseconds of RSA-4096 work (about
// 40 ms on this 2-core machine under load), which a child should not spend
// before it is ready. Get builds it ahead of time; all methods are safe for
// concurrent use.
type LazySNP struct {
	Options SNPOptions
	once    sync.Once
	snp     *SNP
	err     error
}

// Get builds (once) and returns the SNP.
func (l *LazySNP) Get() (*SNP, error) {
	l.once.Do(func() { l.snp, l.err = NewSNP(l.Options) })
	return l.snp, l.err
}

// IsSupported reports true.
func (*LazySNP) IsSupported() bool { return true }

// Product returns the simulated chip's product.
func (l *LazySNP) Product() *sevsnp.SevProduct {
	if l.Options.Product != nil {
		return l.Options.Product
	}
	return abi.DefaultSevProduct()
}

// GetRawQuote is SNP.GetRawQuote, building the SNP first if needed.
func (l *LazySNP) GetRawQuote(reportData [64]byte) ([]byte, error) {
	s, err := l.Get()
	if err != nil {
		return nil, err
	}
	return s.GetRawQuote(reportData)
}
