package attest

import (
	"fmt"

	"crypto/sha3"
	"crypto/sha512"
)

// Platform is the attestation type on Cocos's agent wire (AttestationRequest.type).
type Platform int32

// Platforms, numbered as Cocos's Go attestation.PlatformType.
const (
	SNP     Platform = 0
	VTPM    Platform = 1
	SNPvTPM Platform = 2
	Azure   Platform = 3
	TDX     Platform = 4
	NoCC    Platform = 5
)

// String returns the EAT platform_type name Cocos uses.
func (p Platform) String() string {
	switch p {
	case SNP:
		return "SNP"
	case VTPM:
		return "vTPM"
	case SNPvTPM:
		return "SNP-vTPM"
	case Azure:
		return "Azure"
	case TDX:
		return "TDX"
	case NoCC:
		return "NoCC"
	}
	return fmt.Sprintf("Platform(%d)", int32(p))
}

// ParsePlatform maps an EAT platform_type name back to a Platform.
func ParsePlatform(name string) (Platform, error) {
	for p := SNP; p <= NoCC; p++ {
		if p.String() == name {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown platform_type %q", ErrBadRequest, name)
}

// Nonce sizes on the agent wire (Cocos §5.3): shorter nonces are zero-padded.
const (
	TEENonceSize  = 64
	VTPMNonceSize = 32
)

// PadTEENonce zero-pads a teeNonce / report_data to 64 bytes.
func PadTEENonce(b []byte) ([TEENonceSize]byte, error) {
	var out [TEENonceSize]byte
	if len(b) > TEENonceSize {
		return out, fmt.Errorf("%w: report_data is %d bytes, at most %d", ErrBadRequest, len(b), TEENonceSize)
	}
	copy(out[:], b)
	return out, nil
}

// PadVTPMNonce zero-pads a vtpmNonce to 32 bytes.
func PadVTPMNonce(b []byte) ([VTPMNonceSize]byte, error) {
	var out [VTPMNonceSize]byte
	if len(b) > VTPMNonceSize {
		return out, fmt.Errorf("%w: nonce is %d bytes, at most %d", ErrBadRequest, len(b), VTPMNonceSize)
	}
	copy(out[:], b)
	return out, nil
}

// SNPvTPMReportData is the SNP REPORT_DATA that binds a teeNonce and the TPM
// attestation key, as Cocos computes it: SHA3-512(teeNonce ‖ akPub), akPub
// being the TPMT_PUBLIC encoding carried in attest.Attestation.ak_pub.
func SNPvTPMReportData(teeNonce [TEENonceSize]byte, akPub []byte) [64]byte {
	h := sha3.New512()
	h.Write(teeNonce[:])
	h.Write(akPub)
	var out [64]byte
	copy(out[:], h.Sum(nil))
	return out
}

// KeyReportData is the REPORT_DATA of the SNP report that binds an EAT
// signing key when there is no TPM: SHA-512("cvmd eat signing key\x00" ‖ spki).
func KeyReportData(spki []byte) [64]byte {
	return sha512Sum(append([]byte("cvmd eat signing key\x00"), spki...))
}

func sha512Sum(b []byte) [64]byte { return sha512.Sum512(b) }

// EATNonce is the eat_nonce of a token for these (padded) nonces: the vTPM
// nonce if one was given, else the report data (Cocos). "Given" means not
// all zeros: the agent zero-pads absent nonces, so zeros and absence are the
// same request.
func EATNonce(tee [TEENonceSize]byte, nonce [VTPMNonceSize]byte) []byte {
	if nonce != ([VTPMNonceSize]byte{}) {
		return nonce[:]
	}
	return tee[:]
}
