// Package manager is cvmd's manager link: the guest side of Cocos's CVMS
// protocol (`/cvms.Service/Process`), run by the supervisor.
//
// It dials the manager (plaintext, TLS or mTLS, Cocos's AGENT_CVM_GRPC_*
// variables, see Config and LoadConfig) and keeps two streams open, as
// Cocos's guest does: the control stream (metadata job-id) that receives
// runReq/runReqChunks, agentStateReq, stopComputation and disconnectReq and
// answers them, and the log stream (job-id plus connection-type:
// log-forwarder) that carries every AgentLog and AgentEvent. After each
// connect it first sends a vTPMattestationReport (bound to the client
// certificate when one is configured; empty otherwise, as Cocos does). It
// reconnects forever with exponential back-off and jitter.
//
// What the supervisor provides (Deps):
//
//   - Supervisor: Start (per-computation children plus the manifest to the
//     agent), Stop and State. Start must refuse a second computation while
//     one is active; the link also refuses it itself.
//   - Logs: a logs.CollectorClient to logfwd. The link Reads the durable
//     queue from the last commit, sends each record on the log stream, and
//     Commits a record once it has been sent on a stream that stayed healthy
//     for Config.CommitDelay. Delivery is at-least-once: after a broken
//     stream or a restart of logfwd or the supervisor, records sent but not
//     yet committed are sent again (duplicates), never lost.
//   - Attest: evidence for the client certificate (report data and vTPM
//     nonce derived from it by the attestation child); nil sends it empty.
//   - Events: where the link's own events go (originator "supervisor").
//
// Control-stream answers that could not be sent are kept in memory, in
// order, and sent after reconnecting (also at-least-once).
//
// RunGuest (guest.go) is how the supervisor proper runs the link: it reads
// Cocos's environment with ReadEnvironment (environment.go), the one parser
// of the environment file, which the egress allowlist uses too.
//
// The package does not start children or talk to the agent itself (the
// Supervisor it is given does). It imports ipc, internal/logsink and proto;
// only the supervisor's composition (package supervisor) imports it.
package manager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/internal/logsink"
	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// Supervisor is what the link needs from the supervisor.
type Supervisor interface {
	// Start starts the computation: per-computation children, manifest to
	// the agent. It returns an error (sent to the manager as RunResponse.error)
	// when the computation could not start, including when one is active.
	Start(ctx context.Context, req *cvms.ComputationRunReq) error
	// Stop stops and cleans the active computation (any id, as Cocos does).
	Stop(ctx context.Context, computationID string) error
	// State returns the agent's state name (Idle, ReceivingManifest, ...).
	State(ctx context.Context) (string, error)
}

// AttestFunc returns the attestation report (an EAT token) bound to the
// client certificate's PEM bytes.
type AttestFunc func(ctx context.Context, clientCertPEM []byte) ([]byte, error)

// Deps are what the link uses; Supervisor is required.
type Deps struct {
	Supervisor Supervisor
	Logs       logs.CollectorClient // nil: no log stream
	Attest     AttestFunc           // nil: empty attestation report
	Log        *slog.Logger         // nil: discard
	Events     logsink.Publisher    // nil: link events only logged
}

// Stats count what the link did since Run started.
type Stats struct {
	Connects      uint64
	LogsSent      uint64 // records sent on the log stream (with resends)
	LogsCommitted uint64 // highest offset committed to logfwd
	LogsSkipped   uint64 // queue records that could not be decoded
	ControlSent   uint64
	Rejected      uint64 // server messages refused (malformed, unknown)
}

// Link is a running manager link. Use Run unless a test needs Stats.
type Link struct {
	cfg  Config
	deps Deps
	log  *slog.Logger

	cmds chan func(ctx context.Context) // serial worker for Start/Stop
	asm  *assembler

	mu        sync.Mutex
	out       []*cvms.ClientStreamMessage // guarded by mu; control answers not yet sent
	sent      []sentMsg                   // guarded by mu; sent within CommitDelay
	outReady  chan struct{}               // guarded by mu
	active    string                      // guarded by mu; computation id started, not stopped
	committed uint64                      // guarded by mu; log offset committed to logfwd
	stats     Stats                       // guarded by mu
}

type sentMsg struct {
	msg *cvms.ClientStreamMessage
	at  time.Time
}

// Run runs the link until ctx ends. It returns nil on cancellation; it
// returns early only for an unusable configuration (bad certificates).
func Run(ctx context.Context, cfg Config, deps Deps) error {
	l, err := New(cfg, deps)
	if err != nil {
		return err
	}
	return l.Run(ctx)
}

// New checks cfg and deps and returns a Link ready to Run.
func New(cfg Config, deps Deps) (*Link, error) {
	cfg.fill()
	if cfg.URL == "" {
		return nil, ErrNoConfig
	}
	if deps.Supervisor == nil {
		return nil, errors.New("manager: Deps.Supervisor is nil")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if _, err := transportCreds(cfg); err != nil {
		return nil, err
	}
	return &Link{cfg: cfg, deps: deps, log: deps.Log, cmds: make(chan func(context.Context), 16),
		asm: newAssembler(cfg.MaxRunReqBytes, cfg.ChunkTimeout), outReady: make(chan struct{})}, nil
}

// Stats returns the counters.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Run is the package-level Run on an existing Link.
func (l *Link) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		for {
			select {
			case fn := <-l.cmds:
				fn(ctx)
			case <-ctx.Done():
				return
			}
		}
	})
	wg.Go(func() { l.sweepChunks(ctx) })
	backoff := l.cfg.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := l.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = l.cfg.MinBackoff // it worked for a while
		}
		if errors.Is(err, errDisconnect) {
			l.log.Info("manager asked to disconnect; reconnecting")
			backoff = l.cfg.MinBackoff
		} else {
			l.log.Warn("manager link down", "url", l.cfg.URL, "err", err, "retry_in", backoff)
		}
		// Full jitter in [backoff/2, backoff].
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil
		}
		backoff = min(backoff*2, l.cfg.MaxBackoff)
	}
	return nil
}

func transportCreds(cfg Config) (credentials.TransportCredentials, error) {
	if cfg.ServerCAFile == "" {
		if cfg.ClientCertFile != "" {
			return nil, fmt.Errorf("manager: %s set without %s", envClientCert, envServerCA)
		}
		return insecure.NewCredentials(), nil
	}
	ca, err := os.ReadFile(cfg.ServerCAFile)
	if err != nil {
		return nil, fmt.Errorf("manager: reading server CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("manager: server CA %s holds no PEM certificate", cfg.ServerCAFile)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cfg.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCertFile, cfg.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("manager: loading client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(tc), nil
}

// session is one connection: both streams, until either fails.
func (l *Link) session(ctx context.Context) error {
	creds, err := transportCreds(l.cfg)
	if err != nil {
		return err
	}
	// Keepalive no more often than grpc-go servers accept by default (their
	// enforcement policy's MinTime is 5 minutes, without streams not at all):
	// pinging faster gets the link closed with GOAWAY "too_many_pings" by
	// Cocos's manager, over and over. A manager that goes away is seen at
	// once through its TCP connection; keepalive only covers a silent one.
	conn, err := grpc.NewClient(l.cfg.URL, grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}))
	if err != nil {
		return fmt.Errorf("manager: client for %s: %w", l.cfg.URL, err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	client := cvms.NewServiceClient(conn)
	md := metadata.MD{}
	if l.cfg.CVMID != "" {
		md.Set("job-id", l.cfg.CVMID)
	}
	ctl, err := client.Process(metadata.NewOutgoingContext(sctx, md))
	if err != nil {
		return fmt.Errorf("manager: opening control stream to %s: %w", l.cfg.URL, err)
	}
	// The attestation report goes first, as Cocos's guest sends it.
	if err := ctl.Send(l.attestation(sctx)); err != nil {
		return fmt.Errorf("manager: sending attestation report: %w", err)
	}
	l.mu.Lock()
	l.stats.Connects++
	l.mu.Unlock()
	l.log.Info("manager link up", "url", l.cfg.URL, "job_id", l.cfg.CVMID)
	l.event("ManagerConnected", "Ready", "url", l.cfg.URL)

	var wg sync.WaitGroup
	wg.Go(func() { cancel(l.recvControl(sctx, ctl)) })
	wg.Go(func() { cancel(l.sendControl(sctx, ctl)) })
	if l.deps.Logs != nil {
		lmd := md.Copy()
		if l.cfg.CVMID != "" {
			lmd.Set("connection-type", "log-forwarder")
		}
		wg.Go(func() { cancel(l.forwardLogs(metadata.NewOutgoingContext(sctx, lmd), client)) })
	}
	<-sctx.Done()
	wg.Wait()
	l.requeueSent()
	if err := context.Cause(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

func (l *Link) attestation(ctx context.Context) *cvms.ClientStreamMessage {
	rep := &cvms.AttestationResponse{}
	if l.cfg.ClientCertFile != "" {
		pemBytes, err := os.ReadFile(l.cfg.ClientCertFile)
		if err == nil {
			if b, _ := pem.Decode(pemBytes); b != nil {
				if c, err := x509.ParseCertificate(b.Bytes); err == nil {
					rep.CertSerialNumber = c.SerialNumber.String()
				}
			}
			if l.deps.Attest != nil {
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				file, err := l.deps.Attest(actx, pemBytes)
				cancel()
				if err != nil {
					l.log.Warn("attestation for the manager failed; sending an empty report", "err", err)
				} else {
					rep.File = file
				}
			}
		}
	}
	return &cvms.ClientStreamMessage{Message: &cvms.ClientStreamMessage_VTPMattestationReport{VTPMattestationReport: rep}}
}

// enqueue adds a control answer to the outbox.
func (l *Link) enqueue(m *cvms.ClientStreamMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.out = append(l.out, m)
	close(l.outReady)
	l.outReady = make(chan struct{})
}

// requeueSent puts answers sent too recently to be sure of back at the head
// of the outbox, in order.
func (l *Link) requeueSent() {
	l.mu.Lock()
	defer l.mu.Unlock()
	var back []*cvms.ClientStreamMessage
	for _, s := range l.sent {
		if time.Since(s.at) < l.cfg.CommitDelay {
			back = append(back, s.msg)
		}
	}
	l.sent = nil
	l.out = append(back, l.out...)
}

func (l *Link) sendControl(ctx context.Context, ctl cvms.Service_ProcessClient) error {
	for {
		l.mu.Lock()
		var m *cvms.ClientStreamMessage
		if len(l.out) > 0 {
			m = l.out[0]
		}
		ready := l.outReady
		l.mu.Unlock()
		if m == nil {
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		if err := ctl.Send(m); err != nil {
			return fmt.Errorf("manager: sending on control stream: %w", err)
		}
		now := time.Now()
		l.mu.Lock()
		l.out = l.out[1:]
		keep := l.sent[:0]
		for _, s := range l.sent {
			if now.Sub(s.at) < l.cfg.CommitDelay {
				keep = append(keep, s)
			}
		}
		l.sent = append(keep, sentMsg{msg: m, at: now})
		l.stats.ControlSent++
		l.mu.Unlock()
	}
}

func (l *Link) event(typ, status string, details ...any) {
	if l.deps.Events != nil {
		l.deps.Events.Event(typ, status, details...)
	}
}

// reject reports a server message the link refused.
func (l *Link) reject(err error) {
	l.mu.Lock()
	l.stats.Rejected++
	l.mu.Unlock()
	l.log.Warn("refused manager message", "err", err)
	l.event("ManagerMessageRejected", "Warning", "error", err.Error())
}
