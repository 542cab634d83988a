package agent

import (
	"encoding/base64"
	"fmt"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/cocos/rolesig"
)

// Request metadata keys, exactly as Cocos's CLI sends them.
const (
	mdUserID        = "user-id"
	mdSignature     = "signature"
	mdAlgoType      = "algo_type"
	mdAlgoArgs      = "algo_args"
	mdPythonRuntime = "python_runtime"
	mdDecompress    = "decompress"
	mdFileSize      = "file-size" // response header of downloads
	// mdChallenge (cvmd, not Cocos) is the base64 nonce a challenge-mode
	// signature covers (see challenge.go).
	mdChallenge = "cvmd-role-challenge"
)

// requestMeta is the parsed metadata of an Algo, Data or Result call.
type requestMeta struct {
	Role          string // user-id; informational, as in Cocos
	Signature     []byte
	AlgoType      string // "bin" when absent or empty
	AlgoArgs      []string
	PythonRuntime string // "python3" when absent
	Decompress    bool   // only "true" means true, as in Cocos
	// Challenge is the nonce a challenge-mode signature covers; nil for a
	// Cocos role signature.
	Challenge []byte
}

// parseMeta reads Cocos's request metadata. A missing algo_type is "bin"
// (Cocos crashes there). The signature must be present exactly once and be
// standard base64.
func parseMeta(md metadata.MD) (requestMeta, error) {
	m := requestMeta{AlgoType: "bin", PythonRuntime: "python3"}
	if v := md.Get(mdUserID); len(v) > 0 {
		m.Role = v[0]
	}
	sigs := md.Get(mdSignature)
	if len(sigs) != 1 {
		return m, fmt.Errorf("%w: want exactly one %s metadata value, got %d", ErrUnauthenticated, mdSignature, len(sigs))
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(sigs[0]))
	if err != nil || len(sig) == 0 {
		return m, fmt.Errorf("%w: %s metadata is not base64", ErrUnauthenticated, mdSignature)
	}
	m.Signature = sig
	if v := md.Get(mdAlgoType); len(v) > 0 && v[0] != "" {
		switch v[0] {
		case "bin", "python", "wasm", "docker":
			m.AlgoType = v[0]
		default:
			return m, fmt.Errorf("%w: algo_type %q (want bin, python, wasm or docker)", ErrInvalidArgument, v[0])
		}
	}
	m.AlgoArgs = md.Get(mdAlgoArgs)
	if v := md.Get(mdPythonRuntime); len(v) > 0 && v[0] != "" {
		m.PythonRuntime = v[0]
	}
	if v := md.Get(mdDecompress); len(v) > 0 {
		m.Decompress = v[0] == "true"
	}
	if v := md.Get(mdChallenge); len(v) > 0 {
		n, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v[0]))
		if err != nil || len(v) != 1 || len(n) != rolesig.ChallengeNonceSize {
			return m, fmt.Errorf("%w: want one %s metadata value of %d base64 bytes", ErrUnauthenticated, mdChallenge, rolesig.ChallengeNonceSize)
		}
		m.Challenge = n
	}
	return m, nil
}
