package attest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	tdxclient "github.com/google/go-tdx-guest/client"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/cvmd/cvmd/attest/eat"
)

// TDXQuoteProvider opens the VM's TDX quote interface: configfs-tsm if the
// kernel has it, else /dev/tdx_guest. It fails when neither exists. The
// result is what go-tdx-guest's client.GetRawQuote takes.
func TDXQuoteProvider() (any, error) {
	if qp, err := tdxclient.GetQuoteProvider(); err == nil && qp.IsSupported() == nil {
		return qp, nil
	}
	d, err := tdxclient.OpenDevice()
	if err != nil {
		return nil, fmt.Errorf("%w: TDX: no configfs-tsm report provider and no /dev/tdx_guest: %v", ErrUnsupportedPlatform, err)
	}
	return d, nil
}

// TDXQuote asks qp (a go-tdx-guest QuoteProvider or Device) for a quote over
// reportData and parses it.
func TDXQuote(qp any, reportData [64]byte) ([]byte, *tdxpb.QuoteV4, error) {
	raw, err := tdxclient.GetRawQuote(qp, reportData)
	if err != nil {
		return nil, nil, fmt.Errorf("attest: TDX quote: %w", err)
	}
	q, err := ParseTDXQuote(raw)
	if err != nil {
		return nil, nil, err
	}
	return raw, q, nil
}

// ParseTDXQuote parses a raw TDX quote (QuoteV4, the format go-tdx-guest reads).
func ParseTDXQuote(raw []byte) (*tdxpb.QuoteV4, error) {
	q, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("attest: parsing TDX quote: %w", err)
	}
	v4, ok := q.(*tdxpb.QuoteV4)
	if !ok {
		return nil, errors.New("attest: TDX quote is not a QuoteV4")
	}
	return v4, nil
}

// TDXDebug is the DEBUG bit of TD_ATTRIBUTES.
const TDXDebug = 1

// TDXClaims fills Cocos's x-cocos-tdx claims and the EAT core claims from a
// quote, as Cocos does: measurements = MRTD, ueid = MRTD[:32], oemid Intel,
// hwmodel "Intel-TDX".
func TDXClaims(c *eat.Claims, q *tdxpb.QuoteV4) {
	b := q.GetTdQuoteBody()
	r := b.GetRtmrs()
	rtmr := func(i int) []byte {
		if i < len(r) {
			return r[i]
		}
		return nil
	}
	attrs := binary.LittleEndian.Uint64(pad8(b.GetTdAttributes()))
	c.TDX = &eat.TDX{
		MRTD: b.GetMrTd(), RTMR0: rtmr(0), RTMR1: rtmr(1), RTMR2: rtmr(2), RTMR3: rtmr(3),
		XFAM: binary.LittleEndian.Uint64(pad8(b.GetXfam())), TDAttributes: attrs,
		MRConfigID: b.GetMrConfigId(), MROwner: b.GetMrOwner(), MROwnerConfig: b.GetMrOwnerConfig(), MRSEAM: b.GetMrSeam(),
		Signature: q.GetSignedData().GetSignature(),
	}
	c.Measurements = b.GetMrTd()
	if m := b.GetMrTd(); len(m) >= 32 {
		c.UEID = m[:32]
	}
	c.OEMID = eat.OEMIntel
	c.HWModel = []byte("Intel-TDX")
	c.DebugStatus = eat.DebugDisabledSinceBoot
	if attrs&TDXDebug != 0 {
		c.DebugStatus = eat.DebugEnabled
	}
}

func pad8(b []byte) []byte {
	out := make([]byte, 8)
	copy(out, b)
	return out
}
