package devmanager

import (
	"bytes"
	"crypto/sha3"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cvmd/cvmd/proto/cvms"
)

// Manifest JSON, Cocos's agent.Computation form (reference §2.2): hashes are
// arrays of 32 integers (a hex string is accepted too), keys are base64 DER.
type jsonManifest struct {
	ID              string         `json:"id"`
	Name            string         `json:"name"`
	Description     string         `json:"description"`
	Datasets        []jsonDataset  `json:"datasets"`
	Algorithm       *jsonAlgorithm `json:"algorithm"`
	ResultConsumers []struct {
		UserKey []byte `json:"user_key"`
	} `json:"result_consumers"`
	AgentConfig *struct {
		CertFile     string `json:"cert_file"`
		KeyFile      string `json:"server_key"`
		ServerCAFile string `json:"server_ca_file"`
		ClientCAFile string `json:"client_ca_file"`
		AttestedTLS  bool   `json:"attested_tls"`
	} `json:"agent_config"`
}

type jsonSource struct {
	Type            string `json:"type"`
	URL             string `json:"url"`
	KBSResourcePath string `json:"kbs_resource_path"`
	Encrypted       bool   `json:"encrypted"`
}

type jsonKBS struct {
	URL     string `json:"url"`
	Enabled bool   `json:"enabled"`
}

type jsonDataset struct {
	Hash       jsonHash    `json:"hash"`
	UserKey    []byte      `json:"user_key"`
	Filename   string      `json:"filename"`
	Source     *jsonSource `json:"source"`
	Decompress bool        `json:"decompress"`
	KBS        *jsonKBS    `json:"kbs"`
}

type jsonAlgorithm struct {
	Hash     jsonHash    `json:"hash"`
	UserKey  []byte      `json:"user_key"`
	Source   *jsonSource `json:"source"`
	AlgoType string      `json:"algo_type"`
	AlgoArgs []string    `json:"algo_args"`
	KBS      *jsonKBS    `json:"kbs"`
}

type jsonHash []byte

func (h *jsonHash) UnmarshalJSON(b []byte) error {
	var ints []int
	if err := json.Unmarshal(b, &ints); err == nil {
		if len(ints) != 32 {
			return fmt.Errorf("hash has %d bytes, want 32", len(ints))
		}
		out := make([]byte, 32)
		for i, v := range ints {
			if v < 0 || v > 255 {
				return fmt.Errorf("hash byte %d is %d", i, v)
			}
			out[i] = byte(v)
		}
		*h = out
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("hash is neither an array of 32 integers nor a hex string")
	}
	out, err := hex.DecodeString(s)
	if err != nil || len(out) != 32 {
		return fmt.Errorf("hash %q is not 64 hex digits", s)
	}
	*h = out
	return nil
}

// ParseManifest decodes Cocos's manifest JSON strictly (unknown fields and
// trailing data are errors).
func ParseManifest(b []byte) (*cvms.ComputationRunReq, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m jsonManifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("devmanager: manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("devmanager: manifest: trailing data after the JSON object")
	}
	r := &cvms.ComputationRunReq{Id: m.ID, Name: m.Name, Description: m.Description}
	src := func(s *jsonSource) *cvms.Source {
		if s == nil {
			return nil
		}
		return &cvms.Source{Type: s.Type, Url: s.URL, KbsResourcePath: s.KBSResourcePath, Encrypted: s.Encrypted}
	}
	kbs := func(k *jsonKBS) *cvms.KBSConfig {
		if k == nil {
			return nil
		}
		return &cvms.KBSConfig{Url: k.URL, Enabled: k.Enabled}
	}
	for _, d := range m.Datasets {
		r.Datasets = append(r.Datasets, &cvms.Dataset{Hash: d.Hash, UserKey: d.UserKey, Filename: d.Filename,
			Source: src(d.Source), Decompress: d.Decompress, Kbs: kbs(d.KBS)})
	}
	if a := m.Algorithm; a != nil {
		r.Algorithm = &cvms.Algorithm{Hash: a.Hash, UserKey: a.UserKey, Source: src(a.Source),
			AlgoType: a.AlgoType, AlgoArgs: a.AlgoArgs, Kbs: kbs(a.KBS)}
	}
	for _, c := range m.ResultConsumers {
		r.ResultConsumers = append(r.ResultConsumers, &cvms.ResultConsumer{UserKey: c.UserKey})
	}
	if c := m.AgentConfig; c != nil {
		r.AgentConfig = &cvms.AgentConfig{CertFile: c.CertFile, KeyFile: c.KeyFile, ServerCaFile: c.ServerCAFile,
			ClientCaFile: c.ClientCAFile, AttestedTls: c.AttestedTLS}
	}
	return r, nil
}

// Spec is a computation described by files, as the `cvm manager` flags give it.
type Spec struct {
	ID, Name, Description string
	Algorithm             string   // path of the algorithm file
	AlgoType              string   // bin, python, wasm, docker
	AlgoArgs              []string //
	Datasets              []string // paths; the manifest filename is the base name
	PublicKey             string   // PEM public key for every role unless overridden
	AlgoKey, DataKey      string   // PEM paths overriding PublicKey
	ConsumerKeys          []string // PEM paths; default PublicKey
	AgentConfig           *cvms.AgentConfig

	// Pull mode. AlgoSource, if its URL is set, makes the algorithm
	// remote: the agent fetches it (Algorithm, if given, is only hashed;
	// else AlgoHash is the hash, hex).
	AlgoSource *cvms.Source
	AlgoHash   string
	// RemoteDatasets are fetched by the agent.
	RemoteDatasets []RemoteDataset
	// KBSURL is the key broker of every encrypted resource.
	KBSURL string
	// NoFilenames leaves every dataset's filename empty (as Cocos's test
	// manager sends them: uploads are matched by hash, pulled ones named
	// from their source).
	NoFilenames bool
}

// RemoteDataset is a dataset the agent fetches: --remote-dataset
// url=URL,hash=HEX|file=PATH[,type=T][,filename=F][,encrypted][,kbs-path=P][,decompress].
type RemoteDataset struct {
	Source     *cvms.Source
	Hash       string // hex; or File
	File       string // local copy to hash
	Filename   string
	Decompress bool
}

// ParseRemoteDataset reads one --remote-dataset value.
func ParseRemoteDataset(v string) (RemoteDataset, error) {
	d := RemoteDataset{Source: &cvms.Source{}}
	for _, kv := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "url":
			d.Source.Url = val
		case "type":
			d.Source.Type = val
		case "hash":
			d.Hash = val
		case "file":
			d.File = val
		case "filename":
			d.Filename = val
		case "kbs-path":
			d.Source.KbsResourcePath = val
		case "encrypted":
			d.Source.Encrypted = val == "" || val == "true"
		case "decompress":
			d.Decompress = val == "" || val == "true"
		default:
			return d, fmt.Errorf("devmanager: --remote-dataset %q: unknown key %q (want url, hash, file, type, filename, encrypted, kbs-path, decompress)", v, k)
		}
	}
	if d.Source.Url == "" || (d.Hash == "") == (d.File == "") {
		return d, fmt.Errorf("devmanager: --remote-dataset %q: needs url= and exactly one of hash= or file=", v)
	}
	return d, nil
}

func hashOf(hexHash, file string) ([]byte, error) {
	if file != "" {
		return HashFile(file)
	}
	b, err := hex.DecodeString(hexHash)
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("devmanager: hash %q is not 64 hex digits", hexHash)
	}
	return b, nil
}

func (s Spec) kbs(src *cvms.Source) *cvms.KBSConfig {
	if s.KBSURL == "" || !src.GetEncrypted() {
		return nil
	}
	return &cvms.KBSConfig{Url: s.KBSURL, Enabled: true}
}

// Build makes the ComputationRunReq for s, hashing the files with SHA3-256.
func (s Spec) Build() (*cvms.ComputationRunReq, error) {
	if s.Algorithm == "" && s.AlgoSource.GetUrl() == "" {
		return nil, fmt.Errorf("devmanager: no algorithm path or URL")
	}
	key := func(path string) ([]byte, error) {
		if path == "" {
			path = s.PublicKey
		}
		if path == "" {
			return nil, fmt.Errorf("devmanager: no public key given")
		}
		return ReadPublicKey(path)
	}
	r := &cvms.ComputationRunReq{Id: s.ID, Name: s.Name, Description: s.Description, AgentConfig: s.AgentConfig}
	if r.Id == "" {
		r.Id = "1"
	}
	ak, err := key(s.AlgoKey)
	if err != nil {
		return nil, err
	}
	ah, err := hashOf(s.AlgoHash, s.Algorithm)
	if err != nil {
		return nil, err
	}
	r.Algorithm = &cvms.Algorithm{Hash: ah, UserKey: ak, AlgoType: s.AlgoType, AlgoArgs: s.AlgoArgs}
	if s.AlgoSource.GetUrl() != "" {
		r.Algorithm.Source, r.Algorithm.Kbs = s.AlgoSource, s.kbs(s.AlgoSource)
	}
	for _, d := range s.Datasets {
		dk, err := key(s.DataKey)
		if err != nil {
			return nil, err
		}
		dh, err := HashFile(d)
		if err != nil {
			return nil, err
		}
		name := filepath.Base(d)
		if s.NoFilenames {
			name = ""
		}
		r.Datasets = append(r.Datasets, &cvms.Dataset{Hash: dh, UserKey: dk, Filename: name})
	}
	for _, d := range s.RemoteDatasets {
		dk, err := key(s.DataKey)
		if err != nil {
			return nil, err
		}
		dh, err := hashOf(d.Hash, d.File)
		if err != nil {
			return nil, err
		}
		r.Datasets = append(r.Datasets, &cvms.Dataset{Hash: dh, UserKey: dk, Filename: d.Filename, Source: d.Source, Decompress: d.Decompress, Kbs: s.kbs(d.Source)})
	}
	consumers := s.ConsumerKeys
	if len(consumers) == 0 {
		consumers = []string{""}
	}
	for _, c := range consumers {
		ck, err := key(c)
		if err != nil {
			return nil, err
		}
		r.ResultConsumers = append(r.ResultConsumers, &cvms.ResultConsumer{UserKey: ck})
	}
	return r, nil
}

// HashFile returns SHA3-256 of a regular file's bytes.
func HashFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("devmanager: hashing: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("devmanager: hashing: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("devmanager: hashing %s: not a regular file (directories are not supported here)", path)
	}
	h := sha3.New256()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("devmanager: hashing %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// ReadPublicKey returns the PKIX DER bytes of the PEM public key at path.
func ReadPublicKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("devmanager: public key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("devmanager: public key %s: no PEM block", path)
	}
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		return nil, fmt.Errorf("devmanager: public key %s: %v", path, err)
	}
	return blk.Bytes, nil
}
