package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/children/agent/agenttest"
	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/internal/testutil"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/proto/config"
	rcpb "github.com/cvmd/cvmd/proto/rolechallenge"
)

// rawClient is one gRPC connection to the agent's public API, as a client
// that is not cvm would hold it.
func rawClient(t *testing.T, dial func(context.Context) (net.Conn, error)) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///agent", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// download runs Result with md to the end and returns its error.
func download(cc *grpc.ClientConn, md metadata.MD) error {
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), 10*time.Second)
	defer cancel()
	st, err := agentpb.NewAgentServiceClient(cc).Result(ctx, &agentpb.ResultRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	for {
		if _, err := st.Recv(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// challengeMD asks cc's agent for a nonce and returns consumer metadata
// signed over it.
func challengeMD(t *testing.T, cc *grpc.ClientConn, p *agenttest.Party) (metadata.MD, *rcpb.OfferResponse) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offer, err := rcpb.NewRoleChallengeClient(cc).Offer(ctx, &rcpb.OfferRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := rolesig.SignChallenge(p.Key, rolesig.Consumer, offer.GetComputationId(), offer.GetNonce())
	if err != nil {
		t.Fatal(err)
	}
	return metadata.Pairs("user-id", rolesig.Consumer, "signature", base64.StdEncoding.EncodeToString(sig),
		"cvmd-role-challenge", base64.StdEncoding.EncodeToString(offer.GetNonce())), offer
}

func wantUnauthenticated(t *testing.T, what string, err error, text string) {
	t.Helper()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), text) {
		t.Fatalf("%s: %v, want Unauthenticated containing %q", what, err, text)
	}
}

// TestRoleChallenge: in every mode cvm signs the agent's challenge and is
// served; a challenge signature works once, on its own connection only, so
// a captured one cannot be replayed; a Cocos role signature (replayable
// forever) is accepted unless the manifest or the agent's settings require
// challenges, and then refused with a clear error.
func TestRoleChallenge(t *testing.T) {
	for _, tc := range []struct {
		name             string
		manifest, agents bool
	}{{"optional", false, false}, {"required by the manifest", true, false}, {"required by the agent's settings", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			w := &world{dir: t.TempDir()}
			w.setup(t, "#!/bin/sh\necho done > results/r.txt\n")
			w.h = agenttest.Start(t, agenttest.Options{Settings: &config.AgentSettings{RequireRoleChallenge: tc.agents}})
			w.useHarness()
			m := agenttest.NewManifest("comp-rc", w.algoP, agenttest.HashFile(t, w.algo), "bin", nil, w.cons1)
			m.RequireRoleChallenge = tc.manifest
			if res, err := w.control.Start(context.Background(), m.RunReq(nil)); err != nil || res.GetError() != "" {
				t.Fatalf("start: %v %v", err, res)
			}
			w.mustCVM(t, false, "algo", w.algo, w.algoP.KeyFile) // cvm signs the challenge
			w.waitState(t, "ConsumingResults")

			one, two := rawClient(t, w.dial), rawClient(t, w.dial)
			md, offer := challengeMD(t, one, w.cons1)
			if offer.GetComputationId() != "comp-rc" || offer.GetRequired() != (tc.manifest || tc.agents) || len(offer.GetNonce()) != rolesig.ChallengeNonceSize {
				t.Fatalf("offer %v", offer)
			}
			if err := download(one, md); err != nil {
				t.Fatalf("challenge signature refused: %v", err)
			}
			wantUnauthenticated(t, "the same signature again", download(one, md), "was used already")
			md2, _ := challengeMD(t, one, w.cons1)
			wantUnauthenticated(t, "a nonce of another connection", download(two, md2), "not offered on this connection")

			classic := metadata.Pairs("user-id", rolesig.Consumer, "signature", w.cons1.Sig(t, rolesig.Consumer))
			err := download(two, classic)
			if tc.manifest || tc.agents {
				wantUnauthenticated(t, "a Cocos role signature", err, `computation "comp-rc" requires challenge-bound role signatures`)
			} else if err != nil {
				t.Fatalf("a Cocos role signature refused where challenges are optional: %v", err)
			}
			out := t.TempDir()
			w.mustCVM(t, false, "result", w.cons1.KeyFile, "-o", out)
		})
	}
}
