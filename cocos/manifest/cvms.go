package manifest

import (
	"fmt"

	"github.com/cvmd/cvmd/proto/cvms"
)

// FromRunReq converts the CVMS wire manifest and validates it. Hashes must
// be 32 bytes.
func FromRunReq(r *cvms.ComputationRunReq) (*Computation, *AgentConfig, error) {
	c := &Computation{ID: r.GetId(), Name: r.GetName(), Description: r.GetDescription(), RequireRoleChallenge: r.GetCvmdRequireRoleChallenge()}
	a := r.GetAlgorithm()
	if a == nil {
		return nil, nil, fmt.Errorf("%w: no algorithm", ErrInvalid)
	}
	if err := hash32(&c.Algorithm.Hash, a.GetHash(), "algorithm"); err != nil {
		return nil, nil, err
	}
	c.Algorithm.UserKey = a.GetUserKey()
	c.Algorithm.Source = sourceFrom(a.GetSource())
	c.Algorithm.AlgoType = a.GetAlgoType()
	c.Algorithm.AlgoArgs = a.GetAlgoArgs()
	c.Algorithm.KBS = kbsFrom(a.GetKbs())
	for i, d := range r.GetDatasets() {
		ds := Dataset{UserKey: d.GetUserKey(), Filename: d.GetFilename(), Source: sourceFrom(d.GetSource()), Decompress: d.GetDecompress(), KBS: kbsFrom(d.GetKbs())}
		if err := hash32(&ds.Hash, d.GetHash(), fmt.Sprintf("dataset %d", i)); err != nil {
			return nil, nil, err
		}
		c.Datasets = append(c.Datasets, ds)
	}
	for _, rc := range r.GetResultConsumers() {
		c.ResultConsumers = append(c.ResultConsumers, ResultConsumer{UserKey: rc.GetUserKey()})
	}
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	var ac *AgentConfig
	if x := r.GetAgentConfig(); x != nil {
		ac = &AgentConfig{CertFile: x.GetCertFile(), KeyFile: x.GetKeyFile(), ServerCAFile: x.GetServerCaFile(), ClientCAFile: x.GetClientCaFile(), AttestedTLS: x.GetAttestedTls()}
	}
	return c, ac, nil
}

// RunReq converts the manifest (and agent settings, which may be nil) to the
// CVMS wire message.
func (c *Computation) RunReq(ac *AgentConfig) *cvms.ComputationRunReq {
	r := &cvms.ComputationRunReq{Id: c.ID, Name: c.Name, Description: c.Description, CvmdRequireRoleChallenge: c.RequireRoleChallenge}
	a := c.Algorithm
	r.Algorithm = &cvms.Algorithm{Hash: append([]byte(nil), a.Hash[:]...), UserKey: a.UserKey, Source: sourceTo(a.Source), AlgoType: a.AlgoType, AlgoArgs: a.AlgoArgs, Kbs: kbsTo(a.KBS)}
	for _, d := range c.Datasets {
		r.Datasets = append(r.Datasets, &cvms.Dataset{Hash: append([]byte(nil), d.Hash[:]...), UserKey: d.UserKey, Filename: d.Filename, Source: sourceTo(d.Source), Decompress: d.Decompress, Kbs: kbsTo(d.KBS)})
	}
	for _, rc := range c.ResultConsumers {
		r.ResultConsumers = append(r.ResultConsumers, &cvms.ResultConsumer{UserKey: rc.UserKey})
	}
	if ac != nil {
		r.AgentConfig = &cvms.AgentConfig{CertFile: ac.CertFile, KeyFile: ac.KeyFile, ServerCaFile: ac.ServerCAFile, ClientCaFile: ac.ClientCAFile, AttestedTls: ac.AttestedTLS}
	}
	return r
}

func hash32(dst *[32]byte, b []byte, what string) error {
	if len(b) != len(dst) {
		return fmt.Errorf("%w: %s hash has %d bytes, want 32", ErrInvalid, what, len(b))
	}
	copy(dst[:], b)
	return nil
}

func sourceFrom(s *cvms.Source) *ResourceSource {
	if s == nil {
		return nil
	}
	return &ResourceSource{Type: s.GetType(), URL: s.GetUrl(), KBSResourcePath: s.GetKbsResourcePath(), Encrypted: s.GetEncrypted()}
}

func sourceTo(s *ResourceSource) *cvms.Source {
	if s == nil {
		return nil
	}
	return &cvms.Source{Type: s.Type, Url: s.URL, KbsResourcePath: s.KBSResourcePath, Encrypted: s.Encrypted}
}

func kbsFrom(k *cvms.KBSConfig) *KBSConfig {
	if k == nil {
		return nil
	}
	return &KBSConfig{URL: k.GetUrl(), Enabled: k.GetEnabled()}
}

func kbsTo(k *KBSConfig) *cvms.KBSConfig {
	if k == nil {
		return nil
	}
	return &cvms.KBSConfig{Url: k.URL, Enabled: k.Enabled}
}
