package attest

import (
	"crypto/sha256"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	sevclient "github.com/google/go-sev-guest/client"
	"github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-tpm-tools/proto/tpm"

	"github.com/cvmd/cvmd/attest/eat"
)

// SNPQuoteProvider opens the VM's SEV-SNP report interface: configfs-tsm if
// the kernel has it, else /dev/sev-guest. It fails when neither exists.
func SNPQuoteProvider() (sevclient.QuoteProvider, error) {
	qp, err := sevclient.GetQuoteProvider()
	if err != nil {
		return nil, fmt.Errorf("%w: SEV-SNP: %v", ErrUnsupportedPlatform, err)
	}
	if !qp.IsSupported() {
		return nil, fmt.Errorf("%w: SEV-SNP report interface not supported", ErrUnsupportedPlatform)
	}
	return qp, nil
}

// SNPQuoteProviderAt is SNPQuoteProvider asking for reports at a VMPL
// (0 = the kernel's default level).
func SNPQuoteProviderAt(vmpl uint32) (sevclient.QuoteProvider, error) {
	if vmpl == 0 {
		return SNPQuoteProvider()
	}
	if vmpl > 3 {
		return nil, fmt.Errorf("%w: VMPL %d, want 0–3", ErrBadRequest, vmpl)
	}
	lqp, err := sevclient.GetLeveledQuoteProvider()
	if err != nil || !lqp.IsSupported() {
		return nil, fmt.Errorf("%w: SEV-SNP reports at VMPL %d: %v", ErrUnsupportedPlatform, vmpl, err)
	}
	return leveled{lqp, uint(vmpl)}, nil
}

type leveled struct {
	sevclient.LeveledQuoteProvider
	vmpl uint
}

func (l leveled) GetRawQuote(reportData [64]byte) ([]byte, error) {
	return l.GetRawQuoteAtLevel(reportData, l.vmpl)
}

// SNPClaims fills Cocos's x-cocos-sevsnp claims and the EAT core claims
// (measurements, ueid, oemid, hwmodel, dbgstat) from a parsed report.
func SNPClaims(c *eat.Claims, r *sevsnp.Report) {
	c.SNP = &eat.SNP{
		Measurement:   r.GetMeasurement(),
		TCB:           fmt.Sprintf("current:%d,reported:%d", r.GetCurrentTcb(), r.GetReportedTcb()),
		PlatformInfo:  r.GetPlatformInfo(),
		Policy:        r.GetPolicy(),
		FamilyID:      r.GetFamilyId(),
		ImageID:       r.GetImageId(),
		VMPL:          int(r.GetVmpl()),
		SignatureAlgo: int(r.GetSignatureAlgo()),
		CurrentTCB:    r.GetCurrentTcb(),
		ReportedTCB:   r.GetReportedTcb(),
		ChipID:        r.GetChipId(),
		CommittedTCB:  r.GetCommittedTcb(),
		LaunchTCB:     r.GetLaunchTcb(),
		Signature:     r.GetSignature(),
	}
	c.Measurements = r.GetMeasurement()
	c.UEID = r.GetChipId()
	c.OEMID = eat.OEMAMD
	c.HWModel = fmt.Appendf(nil, "SEV-SNP-%d", r.GetVersion())
	c.DebugStatus = eat.DebugDisabledSinceBoot
	if pol, err := abi.ParseSnpPolicy(r.GetPolicy()); err == nil && pol.Debug {
		c.DebugStatus = eat.DebugEnabled
	}
}

// VTPMClaims fills Cocos's x-cocos-vtpm claims from the SHA-256 quote.
func VTPMClaims(c *eat.Claims, q *tpm.Quote, akPub []byte) {
	v := &eat.VTPM{PCRs: map[string]string{}, Quote: q.GetQuote()}
	h := sha256.New()
	for i := uint32(0); i < 24; i++ {
		val, ok := q.GetPcrs().GetPcrs()[i]
		if !ok {
			continue
		}
		v.PCRs[fmt.Sprintf("sha256:%d", i)] = fmt.Sprintf("%x", val)
		h.Write(val)
	}
	c.VTPM = v
	if c.Measurements == nil {
		c.Measurements = h.Sum(nil)
	}
	if c.UEID == nil {
		id := sha256.Sum256(akPub)
		c.UEID = append([]byte{0x01}, id[:16]...) // type 0x01: random
	}
}
