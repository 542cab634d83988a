package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/stats"

	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/cocos/rolesig"
	rcpb "github.com/cvmd/cvmd/proto/rolechallenge"
)

// Role signatures come in two kinds. Cocos's signs the bare role: a bearer
// credential that anyone who saw it once (a log, a proxy, a previous
// computation's agent) can replay against every computation declaring the
// key. cvmd's challenge kind signs rolesig.ChallengeMessage(role, computation
// id, nonce), with a nonce this agent offered on the same connection a moment
// before and accepts once. A computation requires the challenge kind when
// its manifest or the agent's settings say so; otherwise both are accepted,
// so Cocos's CLI keeps working.

// Bounds of the nonces the agent keeps.
const (
	challengeTTL         = time.Minute
	maxOffersPerConn     = 8    // the oldest of a connection goes for a new one
	maxOffersOutstanding = 4096 // beyond it, expired ones go, then Offer is refused
)

// connIDKey is the context key of a public connection's id.
type connIDKey struct{}

// connTagger is the public server's stats handler: it gives every
// connection an id (in the context of each of its calls), so a nonce can be
// bound to the connection it was offered on, and forgets a connection's
// nonces when it ends.
type connTagger struct {
	next atomic.Uint64
	ch   *challenges
}

func (h *connTagger) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connIDKey{}, h.next.Add(1))
}

func (h *connTagger) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		if id, ok := ctx.Value(connIDKey{}).(uint64); ok {
			h.ch.dropConn(id)
		}
	}
}

func (*connTagger) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (*connTagger) HandleRPC(context.Context, stats.RPCStats)                       {}

// connID is the id connTagger gave the connection of ctx's call; 0 when
// the call did not come through a tagged server.
func connID(ctx context.Context) uint64 {
	id, _ := ctx.Value(connIDKey{}).(uint64)
	return id
}

// offer is one nonce handed out.
type offer struct {
	conn    uint64
	compID  string
	expires time.Time
}

// challenges are the nonces offered and not yet used.
type challenges struct {
	mu     sync.Mutex
	offers map[[rolesig.ChallengeNonceSize]byte]offer // guarded by mu
}

func newChallenges() *challenges {
	return &challenges{offers: map[[rolesig.ChallengeNonceSize]byte]offer{}}
}

// issue makes a nonce for a call on conn about compID.
func (c *challenges) issue(conn uint64, compID string, now time.Time) ([]byte, error) {
	var n [rolesig.ChallengeNonceSize]byte
	if _, err := rand.Read(n[:]); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var oldest [rolesig.ChallengeNonceSize]byte
	mine := 0
	for k, o := range c.offers {
		if now.After(o.expires) {
			delete(c.offers, k)
			continue
		}
		if o.conn == conn {
			if mine == 0 || o.expires.Before(c.offers[oldest].expires) {
				oldest = k
			}
			mine++
		}
	}
	if mine >= maxOffersPerConn {
		delete(c.offers, oldest)
	}
	if len(c.offers) >= maxOffersOutstanding {
		return nil, fmt.Errorf("%w: %d role challenges outstanding", ErrTooLarge, len(c.offers))
	}
	c.offers[n] = offer{conn: conn, compID: compID, expires: now.Add(challengeTTL)}
	return n[:], nil
}

// take uses up nonce: it reports whether it was offered on conn for compID
// and has not expired. A nonce is taken at most once, whatever the outcome.
func (c *challenges) take(nonce []byte, conn uint64, compID string, now time.Time) bool {
	if len(nonce) != rolesig.ChallengeNonceSize || conn == 0 {
		return false
	}
	k := [rolesig.ChallengeNonceSize]byte(nonce)
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.offers[k]
	delete(c.offers, k)
	return ok && o.conn == conn && o.compID == compID && !now.After(o.expires)
}

func (c *challenges) dropConn(conn uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, o := range c.offers {
		if o.conn == conn {
			delete(c.offers, k)
		}
	}
}

// challengeRequired reports whether man's computation refuses role-only
// signatures: its manifest or the agent's settings say so.
func (a *Agent) challengeRequired(man *manifest.Computation) bool {
	return a.lim.requireChallenge || man.RequireRoleChallenge
}

// signatureCheck returns how this request's signature is checked against a
// key and a role: as a challenge signature when the request names a nonce
// (which it uses up), else as Cocos's role signature unless the computation
// requires challenges. Preconditions: sn.man is not nil.
func (a *Agent) signatureCheck(ctx context.Context, m requestMeta, sn snapshot) (func(pub crypto.PublicKey, role string) bool, error) {
	if m.Challenge != nil {
		if !a.challenges.take(m.Challenge, connID(ctx), sn.man.ID, time.Now()) {
			return nil, fmt.Errorf("%w: the %s nonce was not offered on this connection for computation %q, was used already or expired (ask RoleChallenge/Offer for a new one)",
				ErrUnauthenticated, mdChallenge, sn.man.ID)
		}
		return func(pub crypto.PublicKey, role string) bool {
			return rolesig.VerifyChallenge(pub, role, sn.man.ID, m.Challenge, m.Signature)
		}, nil
	}
	if a.challengeRequired(sn.man) {
		return nil, fmt.Errorf("%w: computation %q requires challenge-bound role signatures: sign the nonce of cvmd.rolechallenge.v1.RoleChallenge/Offer and send it in %s metadata (cvm does; Cocos's CLI cannot)",
			ErrUnauthenticated, sn.man.ID, mdChallenge)
	}
	return func(pub crypto.PublicKey, role string) bool { return rolesig.Verify(pub, role, m.Signature) }, nil
}

// challengeService is cvmd.rolechallenge.v1.RoleChallenge.
type challengeService struct {
	rcpb.UnimplementedRoleChallengeServer
	a *Agent
}

func (s *challengeService) Offer(ctx context.Context, _ *rcpb.OfferRequest) (*rcpb.OfferResponse, error) {
	res, err := s.a.offer(ctx)
	return res, toStatus(s.a.log, "Offer", err)
}

func (a *Agent) offer(ctx context.Context) (*rcpb.OfferResponse, error) {
	sn := a.snapshot()
	if sn.man == nil {
		return nil, fmt.Errorf("%w: no computation to sign for", ErrWrongState)
	}
	conn := connID(ctx)
	if conn == 0 {
		return nil, fmt.Errorf("%w: this connection cannot be told apart from others", ErrUnavailable)
	}
	n, err := a.challenges.issue(conn, sn.man.ID, time.Now())
	if err != nil {
		return nil, err
	}
	return &rcpb.OfferResponse{Nonce: n, ComputationId: sn.man.ID, Required: a.challengeRequired(sn.man),
		ExpiresInMs: uint32(challengeTTL.Milliseconds())}, nil
}
