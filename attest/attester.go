package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	sevclient "github.com/google/go-sev-guest/client"
	"github.com/google/go-tpm-tools/client"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	"github.com/google/go-tpm-tools/proto/tpm"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/attest/eat"
)

// DefaultIssuer is the EAT issuer and COSE kid when none is configured.
const DefaultIssuer = "cvmd-attestation"

// Request asks for evidence, as the agent's Attestation RPC does.
type Request struct {
	ReportData []byte   // teeNonce, ≤ 64 bytes
	Nonce      []byte   // vtpmNonce, ≤ 32 bytes
	Platform   Platform // SNP, VTPM or SNPvTPM
}

// Attester turns requests into EAT tokens. Set the fields, then call Attest
// from any goroutine.
type Attester struct {
	// TPM is the vTPM; nil means none (vTPM and SNP-vTPM are unavailable).
	TPM *TPM
	// SNP produces SEV-SNP reports; nil means none.
	SNP sevclient.QuoteProvider
	// TDX produces TDX quotes: a go-tdx-guest client.QuoteProvider or
	// client.Device; nil means none.
	TDX any
	// Azure, with TPM, makes this an Azure confidential VM (platform Azure);
	// nil = not Azure.
	Azure *AzureVM
	// TDXCollateral, on a simulated TDX only, is the simulated platform's
	// intelpcs collateral bundle, carried in tokens (x-cvmd-tdx-collateral).
	TDXCollateral func() []byte
	// Simulated marks every token as coming from a simulated platform.
	Simulated bool
	// Issuer is claim 1 and the COSE kid; "" = DefaultIssuer.
	Issuer string
	// SWVersion is claim 271 (the cvmd version); "" = omitted.
	SWVersion string
	// Log returns the current measurement log; nil = no log in tokens. Its
	// last boot event names the boot in every token (x-cvmd-boot-id).
	Log func() EventLog
	// MeasureLock, if set, is read-locked from the quote to the Log call, so
	// the log in a token is exactly the one its quote covers: whoever
	// extends PCRs 15/16 (log append + extend) must hold it write-locked.
	MeasureLock *sync.RWMutex
	// Now is the clock; nil = time.Now.
	Now func() time.Time

	keyMu sync.Mutex
	key   *teeKey // guarded by keyMu; the token key of a TEE without TPM
}

// teeKey is an ephemeral token-signing key and the TEE report binding it.
type teeKey struct {
	key     *ecdsa.PrivateKey
	signing *eat.Signing
}

// Has reports whether the attester can produce evidence for p.
func (a *Attester) Has(p Platform) bool {
	switch p {
	case SNP:
		return a.SNP != nil
	case VTPM:
		return a.TPM != nil
	case SNPvTPM:
		return a.SNP != nil && a.TPM != nil
	case TDX:
		return a.TDX != nil
	case Azure:
		return a.TPM != nil && a.Azure != nil
	}
	return false
}

// Describe names what produces evidence for p, e.g. "simulated SNP-vTPM".
func (a *Attester) Describe(p Platform) string {
	if a.Simulated {
		return "simulated " + p.String()
	}
	return p.String()
}

// Attest produces a signed EAT token for req.
func (a *Attester) Attest(req Request) ([]byte, error) {
	switch req.Platform {
	case SNP, VTPM, SNPvTPM, TDX, Azure:
	default:
		return nil, fmt.Errorf("%w: attestation type %d (want 0–4)", ErrBadRequest, int32(req.Platform))
	}
	if !a.Has(req.Platform) {
		return nil, fmt.Errorf("%w: %s", ErrUnsupportedPlatform, req.Platform)
	}
	tee, err := PadTEENonce(req.ReportData)
	if err != nil {
		return nil, err
	}
	nonce, err := PadVTPMNonce(req.Nonce)
	if err != nil {
		return nil, err
	}
	c := &eat.Claims{
		PlatformType: req.Platform.String(),
		IntUse:       1,
		DebugStatus:  eat.DebugDisabledSinceBoot,
		SWName:       "cvmd",
		SWVersion:    a.SWVersion,
		Simulated:    a.Simulated,
	}
	c.Nonce = EATNonce(tee, nonce)
	var sign eat.Signer
	switch req.Platform {
	case SNP:
		att, err := sevclient.GetQuoteProto(a.SNP, tee)
		if err != nil {
			return nil, fmt.Errorf("attest: SEV-SNP report: %w", err)
		}
		if c.RawReport, err = proto.Marshal(att); err != nil {
			return nil, err
		}
		SNPClaims(c, att.GetReport())
		if c.Signer, sign, err = a.teeSigner(eat.SignerSNPKeyReport, a.snpKeyReport); err != nil {
			return nil, err
		}
	case TDX:
		raw, q, err := TDXQuote(a.TDX, tee)
		if err != nil {
			return nil, err
		}
		c.RawReport = raw
		TDXClaims(c, q)
		if c.Signer, sign, err = a.teeSigner(eat.SignerTDXKeyQuote, a.tdxKeyQuote); err != nil {
			return nil, err
		}
		if a.Simulated && a.TDXCollateral != nil {
			c.TDXCollateral = a.TDXCollateral()
		}
	case VTPM, SNPvTPM, Azure:
		if a.MeasureLock != nil {
			a.MeasureLock.RLock()
			defer a.MeasureLock.RUnlock()
		}
		var att *attestpb.Attestation
		switch req.Platform {
		case VTPM:
			att, err = a.TPM.Attest(nonce[:], nil, nil)
		case Azure:
			att, err = a.azureEvidence(c, tee, nonce)
		default:
			rd := SNPvTPMReportData(tee, a.TPM.AKPub())
			c.ReportData = tee[:]
			att, err = a.TPM.Attest(nonce[:], &client.SevSnpQuoteProvider{QuoteProvider: a.SNP}, rd[:])
		}
		if err != nil {
			return nil, err
		}
		if c.RawReport, err = proto.Marshal(att); err != nil {
			return nil, err
		}
		if r := att.GetSevSnpAttestation().GetReport(); r != nil && req.Platform == SNPvTPM {
			SNPClaims(c, r)
		}
		VTPMClaims(c, SHA256Quote(att), att.GetAkPub())
		spki, err := x509.MarshalPKIXPublicKey(a.TPM.AKPublicKey())
		if err != nil {
			return nil, err
		}
		c.Signer = &eat.Signing{Kind: eat.SignerTPMAK, Key: spki}
		sign = a.TPM.Sign
		if a.Log != nil {
			log := a.Log()
			if c.EventLog, err = MarshalLog(log); err != nil {
				return nil, err
			}
			c.BootID = log.BootID()
		}
	}
	if c.BootID == "" && a.Log != nil && c.EventLog == nil {
		c.BootID = a.Log().BootID() // no quote to cover the log: the boot id alone, signed
	}
	if a.Simulated {
		c.SWName = "cvmd (simulated platform: not for production)"
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	issuer := a.Issuer
	if issuer == "" {
		issuer = DefaultIssuer
	}
	return eat.Encode(c, issuer, now(), sign)
}

// SHA256Quote returns the quote of the SHA-256 bank, or nil.
func SHA256Quote(att *attestpb.Attestation) *tpm.Quote {
	for _, q := range att.GetQuotes() {
		if q.GetPcrs().GetHash() == tpm.HashAlgo_SHA256 {
			return q
		}
	}
	return nil
}

// teeSigner returns the token-signing key of a TEE without TPM, creating it
// and the TEE report that binds it (REPORT_DATA = KeyReportData(SPKI)) on
// first use.
func (a *Attester) teeSigner(kind string, report func(rd [64]byte) ([]byte, error)) (*eat.Signing, eat.Signer, error) {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	if a.key == nil || a.key.signing.Kind != kind {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return nil, nil, err
		}
		rep, err := report(KeyReportData(spki))
		if err != nil {
			return nil, nil, fmt.Errorf("attest: TEE report binding the token key: %w", err)
		}
		if len(rep) == 0 {
			return nil, nil, errors.New("attest: empty TEE report binding the token key")
		}
		a.key = &teeKey{key: key, signing: &eat.Signing{Kind: kind, Key: spki, KeyReport: rep}}
	}
	return a.key.signing, eat.KeySigner(a.key.key), nil
}

func (a *Attester) snpKeyReport(rd [64]byte) ([]byte, error) {
	att, err := sevclient.GetQuoteProto(a.SNP, rd)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(att)
}

func (a *Attester) tdxKeyQuote(rd [64]byte) ([]byte, error) {
	raw, _, err := TDXQuote(a.TDX, rd)
	return raw, err
}
