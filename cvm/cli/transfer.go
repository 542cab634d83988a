package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/proto/rolechallenge"
)

// chunkSize is the upload chunk, as Cocos's CLI (1 MiB).
const chunkSize = 1 << 20

// signedContext adds the auth metadata for role, signed with the private
// key in keyFile, for one call to ag. When ag offers a role challenge (a cvmd
// agent: cvmd.rolechallenge.v1.RoleChallenge), the signature covers the
// role, the computation id and the agent's fresh nonce, and cannot be
// replayed; an agent without the service (Cocos's) gets Cocos's signature
// of the bare role. Make the call right after: the nonce is good for one
// call on this connection, for a minute.
func signedContext(ctx context.Context, ag *Agent, keyFile, role string) (context.Context, error) {
	pemBytes, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading private key: %w", err)
	}
	key, err := rolesig.ParsePrivateKeyPEM(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %v", keyFile, err)
	}
	cctx, cancel := context.WithTimeout(ctx, ag.Config.Timeout)
	offer, err := rolechallenge.NewRoleChallengeClient(ag.Conn).Offer(cctx, &rolechallenge.OfferRequest{}, grpc.WaitForReady(true))
	cancel()
	switch {
	case status.Code(err) == codes.Unimplemented:
		sig, err := rolesig.SignBase64(key, role)
		if err != nil {
			return nil, fmt.Errorf("signing as %s: %v", role, err)
		}
		return metadata.AppendToOutgoingContext(ctx, "user-id", role, "signature", sig), nil
	case err != nil:
		return nil, fmt.Errorf("asking the agent for a role challenge: %s", statusText(err))
	}
	sig, err := rolesig.SignChallenge(key, role, offer.GetComputationId(), offer.GetNonce())
	if err != nil {
		return nil, fmt.Errorf("signing as %s: %v", role, err)
	}
	return metadata.AppendToOutgoingContext(ctx, "user-id", role,
		"signature", base64.StdEncoding.EncodeToString(sig),
		"cvmd-role-challenge", base64.StdEncoding.EncodeToString(offer.GetNonce())), nil
}

// progress is a byte counter shown as a bar on a terminal only.
type progress struct {
	bar *progressbar.ProgressBar
}

func newProgress(o IO, size int64, desc string) *progress {
	if !o.Terminal {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(o.Err), progressbar.OptionShowBytes(true), progressbar.OptionSetDescription(desc),
		progressbar.OptionSetPredictTime(true), progressbar.OptionShowTotalBytes(true), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(o.Err) }))}
}

func (p *progress) add(n int) {
	if p.bar != nil {
		p.bar.Add(n)
	}
}

func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// sendFile streams r in 1 MiB chunks through send, which builds and sends
// one message around each chunk. The chunk buffer is reused: gRPC has
// encoded a message when SendMsg returns.
func sendFile(r io.Reader, p *progress, send func([]byte) error) (int64, error) {
	buf := make([]byte, chunkSize)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if serr := send(buf[:n]); serr != nil {
				return total, serr
			}
			total += int64(n)
			p.add(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// recvFile reads a download's file-size header, then writes every chunk
// that get returns to w until EOF. It returns the bytes written.
func recvFile(stream grpc.ClientStream, w io.Writer, o IO, desc string, get func() ([]byte, error)) (int64, error) {
	var size int64
	if md, err := stream.Header(); err == nil {
		if v := md.Get("file-size"); len(v) > 0 {
			size, _ = strconv.ParseInt(v[0], 10, 64)
		}
	}
	p := newProgress(o, size, desc)
	defer p.done()
	var total int64
	for {
		b, err := get()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if _, err := w.Write(b); err != nil {
			return total, err
		}
		total += int64(len(b))
		p.add(len(b))
	}
}
