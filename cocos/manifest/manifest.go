// Package manifest is a computation manifest in Cocos's JSON form (the
// `agent.Computation` JSON that `cocos-cli checksum --manifest` hashes):
// parsing it strictly, validating it, converting it to and from the CVMS
// wire message (cvms.ComputationRunReq), and its checksum.
//
// Hashes are JSON arrays of 32 integers, as Go encodes a [32]byte (a base64
// string is refused, as in Cocos); keys are base64 PKIX DER. The manifest's
// agent_config, which Cocos keeps outside the hashed struct, is accepted and
// carried but is not part of the checksum.
//
// It does not fetch remote sources or talk to anybody. Imported by the agent,
// the CLI and the development manager.
package manifest

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/rolesig"
)

// Computation is the manifest. Field order and JSON names are Cocos's, so
// json.Marshal gives the bytes Cocos hashes.
type Computation struct {
	ID              string           `json:"id,omitempty"`
	Name            string           `json:"name,omitempty"`
	Description     string           `json:"description,omitempty"`
	Datasets        []Dataset        `json:"datasets,omitempty"`
	Algorithm       Algorithm        `json:"algorithm,omitempty"`
	ResultConsumers []ResultConsumer `json:"result_consumers,omitempty"`
	// RequireRoleChallenge is a cvmd extension (Cocos has no such field, so
	// its checksum of a manifest that sets it differs from ours): every
	// party must sign a challenge bound to the computation and the
	// connection, never the bare role (rolesig.ChallengeMessage). Omitted
	// when false, so Cocos manifests hash as before.
	RequireRoleChallenge bool `json:"require_role_challenge,omitempty"`
}

// Dataset is one declared dataset.
type Dataset struct {
	Hash       [32]byte        `json:"hash,omitempty"`
	UserKey    []byte          `json:"user_key,omitempty"`
	Filename   string          `json:"filename,omitempty"`
	Source     *ResourceSource `json:"source,omitempty"`
	Decompress bool            `json:"decompress,omitempty"`
	KBS        *KBSConfig      `json:"kbs,omitempty"`
}

// Algorithm is the declared algorithm.
type Algorithm struct {
	Hash     [32]byte        `json:"hash,omitempty"`
	UserKey  []byte          `json:"user_key,omitempty"`
	Source   *ResourceSource `json:"source,omitempty"`
	AlgoType string          `json:"algo_type,omitempty"`
	AlgoArgs []string        `json:"algo_args,omitempty"`
	KBS      *KBSConfig      `json:"kbs,omitempty"`
}

// ResultConsumer is a party allowed to download the results.
type ResultConsumer struct {
	UserKey []byte `json:"user_key,omitempty"`
}

// ResourceSource is a remote location of an algorithm or dataset.
type ResourceSource struct {
	Type            string `json:"type,omitempty"`
	URL             string `json:"url,omitempty"`
	KBSResourcePath string `json:"kbs_resource_path,omitempty"`
	Encrypted       bool   `json:"encrypted,omitempty"`
}

// KBSConfig is a key broker for an encrypted resource.
type KBSConfig struct {
	URL     string `json:"url,omitempty"`
	Enabled bool   `json:"enabled,omitempty"`
}

// AgentConfig is the manifest's agent_config (TLS settings of the ingress).
type AgentConfig struct {
	CertFile     string `json:"cert_file,omitempty"`
	KeyFile      string `json:"server_key,omitempty"`
	ServerCAFile string `json:"server_ca_file,omitempty"`
	ClientCAFile string `json:"client_ca_file,omitempty"`
	AttestedTLS  bool   `json:"attested_tls,omitempty"`
}

// file is what Parse decodes: the computation plus agent_config.
type file struct {
	Computation
	AgentConfig *AgentConfig `json:"agent_config,omitempty"`
}

// ErrInvalid classifies every refusal of Parse and Validate.
var ErrInvalid = errors.New("manifest: invalid")

// Parse decodes a manifest file strictly (unknown fields and trailing data
// are refused) and validates it. agent_config, if present, is returned too.
func Parse(data []byte) (*Computation, *AgentConfig, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if err := f.Computation.Validate(); err != nil {
		return nil, nil, err
	}
	return &f.Computation, f.AgentConfig, nil
}

// Checksum is `cocos-cli checksum --manifest`: SHA3-256 of the manifest
// decoded leniently (unknown fields ignored, as encoding/json does) and
// re-encoded in Cocos's canonical form.
func Checksum(data []byte) ([32]byte, error) {
	var c Computation
	if err := json.Unmarshal(data, &c); err != nil {
		return [32]byte{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	out, err := json.Marshal(&c)
	if err != nil {
		return [32]byte{}, fmt.Errorf("manifest: encoding: %v", err)
	}
	return digest.Sum(out), nil
}

// Validate checks what the agent relies on: every key parses as a supported
// PKIX public key, dataset filenames are valid and unique, and the
// algorithm type is known.
func (c *Computation) Validate() error {
	if len(c.Algorithm.UserKey) == 0 && c.Algorithm.Source == nil {
		return fmt.Errorf("%w: algorithm has no user_key", ErrInvalid)
	}
	if len(c.Algorithm.UserKey) > 0 {
		if _, err := rolesig.ParsePublicKey(c.Algorithm.UserKey); err != nil {
			return fmt.Errorf("%w: algorithm user_key: %v", ErrInvalid, err)
		}
	}
	switch c.Algorithm.AlgoType {
	case "", "bin", "python", "wasm", "docker":
	default:
		return fmt.Errorf("%w: algorithm algo_type %q (want bin, python, wasm or docker)", ErrInvalid, c.Algorithm.AlgoType)
	}
	seen := map[string]bool{}
	for i, d := range c.Datasets {
		// A dataset without a filename is allowed (Cocos's own test
		// manager sends them): an upload is then matched by its hash, and
		// a pulled one takes its name from its source.
		if d.Filename != "" {
			if err := ValidFilename(d.Filename); err != nil {
				return fmt.Errorf("%w: dataset %d: %v", ErrInvalid, i, err)
			}
			if seen[d.Filename] {
				return fmt.Errorf("%w: dataset %d: filename %q declared twice", ErrInvalid, i, d.Filename)
			}
			seen[d.Filename] = true
		}
		if _, err := rolesig.ParsePublicKey(d.UserKey); err != nil {
			return fmt.Errorf("%w: dataset %s user_key: %v", ErrInvalid, d.Label(i), err)
		}
	}
	for i, r := range c.ResultConsumers {
		if _, err := rolesig.ParsePublicKey(r.UserKey); err != nil {
			return fmt.Errorf("%w: result consumer %d user_key: %v", ErrInvalid, i, err)
		}
	}
	return nil
}

// Label names dataset i in messages: its filename, or its index when it
// has none.
func (d Dataset) Label(i int) string {
	if d.Filename != "" {
		return fmt.Sprintf("%q", d.Filename)
	}
	return fmt.Sprintf("%d (no filename)", i)
}

// Pulled reports whether the agent fetches the resource from its source
// instead of waiting for an upload: a source with a URL.
func (s *ResourceSource) Pulled() bool { return s != nil && s.URL != "" }

// ValidFilename refuses dataset filenames that are empty, contain "/" or
// NUL, or are "." or "..": a filename names one entry of the datasets
// directory and nothing else.
func ValidFilename(name string) error {
	switch {
	case name == "":
		return errors.New("filename is empty")
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("filename %q contains / or NUL", name)
	case name == "." || name == "..":
		return fmt.Errorf("filename %q is not a file name", name)
	case len(name) > 255:
		return fmt.Errorf("filename of %d bytes is longer than 255", len(name))
	}
	return nil
}

// Keys holds the parsed public keys of a manifest, by role.
type Keys struct {
	Algorithm crypto.PublicKey
	Datasets  []crypto.PublicKey // index = dataset index
	Consumers []crypto.PublicKey
}

// ParseKeys parses every key of a validated manifest.
func (c *Computation) ParseKeys() (*Keys, error) {
	k := &Keys{}
	var err error
	if len(c.Algorithm.UserKey) > 0 {
		if k.Algorithm, err = rolesig.ParsePublicKey(c.Algorithm.UserKey); err != nil {
			return nil, fmt.Errorf("%w: algorithm user_key: %v", ErrInvalid, err)
		}
	}
	for i, d := range c.Datasets {
		p, err := rolesig.ParsePublicKey(d.UserKey)
		if err != nil {
			return nil, fmt.Errorf("%w: dataset %s user_key: %v", ErrInvalid, d.Label(i), err)
		}
		k.Datasets = append(k.Datasets, p)
	}
	for i, r := range c.ResultConsumers {
		p, err := rolesig.ParsePublicKey(r.UserKey)
		if err != nil {
			return nil, fmt.Errorf("%w: result consumer %d user_key: %v", ErrInvalid, i, err)
		}
		k.Consumers = append(k.Consumers, p)
	}
	return k, nil
}
