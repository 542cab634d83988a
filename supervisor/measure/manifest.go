package measure

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cvmd/cvmd/cocos/manifest"
	attestpb "github.com/cvmd/cvmd/proto/attestation"
	"github.com/cvmd/cvmd/proto/cvms"
)

// manifestJSON is the JSON Cocos extends PCR 16 with (§1.3, §2.2): the
// computation as agent.Computation, json.Marshal'ed. Cocos does not copy
// Source.type into it (the type is inferred from the URL later), so
// neither do we: the same manifest gives the same PCR 16 on both.
func manifestJSON(req *cvms.ComputationRunReq) ([]byte, error) {
	c, _, err := manifest.FromRunReq(req)
	if err != nil {
		return nil, err
	}
	if c.Algorithm.Source != nil {
		c.Algorithm.Source.Type = ""
	}
	for i := range c.Datasets {
		if c.Datasets[i].Source != nil {
			c.Datasets[i].Source.Type = ""
		}
	}
	return json.Marshal(c)
}

// Manifest extends PCR 16 with the computation's manifest through the
// attestation child, so that evidence given during the computation (aTLS,
// the manager's attestation requests) names it, after every measurement
// queued before it (Flush). It waits up to 10 s for the child's answers.
func (m *Measurer) Manifest(ctx context.Context, req *cvms.ComputationRunReq) error {
	b, err := manifestJSON(req)
	if err != nil {
		return fmt.Errorf("measure: manifest of computation %s: %w", req.GetId(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := m.Flush(ctx); err != nil {
		return err
	}
	if _, err := m.send(ctx, &attestpb.ExtendManifestRequest{ManifestJson: b}); err != nil {
		return fmt.Errorf("measure: extending PCR 16 with the manifest: %w", err)
	}
	return nil
}
