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
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/cocos/chunks"
	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/proto/rolechallenge"
)

// chunkSize is the upload chunk, as Cocos's CLI (1 MiB).
const chunkSize = 1 << 20

// cocos/chunks's codec stands in for gRPC's proto codec in this process:
// the same bytes on the wire and the same content-type, but upload and
// download chunks pass through gRPC without being copied.
func init() { encoding.RegisterCodecV2(chunks.Codec{}) }

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

// uploadBuffers are the chunks uploads are read into; gRPC hands each
// back once written (cocos/chunks), so an upload reuses a few buffers.
var uploadBuffers = chunks.NewPool(chunkSize)

// sendFile streams r in 1 MiB chunks through send, which sends one message
// around each chunk (a chunks.Message: gRPC writes the buffer itself and
// frees it). r is read ahead of the sending, in a goroutine of its own.
func sendFile(r io.Reader, p *progress, send func(mem.BufferSlice) error) (int64, error) {
	return chunks.ReadChunks(r, uploadBuffers, func(b mem.Buffer) error {
		n := b.Len()
		if err := send(mem.BufferSlice{b}); err != nil {
			return err
		}
		p.add(n)
		return nil
	})
}

// writeDepth is how many received chunks may wait for the writer.
const writeDepth = 4

// recvFile reads a download's file-size header, then writes every chunk
// that recv returns (references into gRPC's receive buffers) to w until
// EOF. Writing runs in a goroutine of its own, overlapped with receiving,
// one writev per chunk when w is a file. It returns the bytes written.
func recvFile(stream grpc.ClientStream, w io.Writer, o IO, desc string, recv func() (mem.BufferSlice, error)) (int64, error) {
	var size int64
	if md, err := stream.Header(); err == nil {
		if v := md.Get("file-size"); len(v) > 0 {
			size, _ = strconv.ParseInt(v[0], 10, 64)
		}
	}
	p := newProgress(o, size, desc)
	defer p.done()
	ch := make(chan mem.BufferSlice, writeDepth)
	var written int64
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for bs := range ch {
			if werr == nil {
				n := bs.Len()
				if werr = writeChunk(w, bs); werr == nil {
					written += int64(n)
				}
			}
			bs.Free()
		}
	}()
	var err error
	for {
		var bs mem.BufferSlice
		if bs, err = recv(); err != nil {
			break
		}
		p.add(bs.Len())
		ch <- bs
	}
	close(ch)
	<-done
	if errors.Is(err, io.EOF) {
		err = nil
	}
	if werr != nil {
		err = werr
	}
	return written, err
}

// writeChunk writes bs to w: with one writev to a file.
func writeChunk(w io.Writer, bs mem.BufferSlice) error {
	if f, ok := w.(*os.File); ok {
		return chunks.WriteBuffers(f, bs)
	}
	for _, b := range bs {
		if _, err := w.Write(b.ReadOnlyData()); err != nil {
			return err
		}
	}
	return nil
}

// recvChunk receives one message of a download into rest, its file field
// (1, in every download message of proto/agent) as gRPC's buffers.
func recvChunk(stream grpc.ClientStream, rest proto.Message) (mem.BufferSlice, error) {
	m := chunks.Message{Field: fileField, Rest: rest}
	err := stream.RecvMsg(&m)
	return m.Data, err
}

// fileField is the bulk field of the upload and download messages:
// AlgoRequest.algorithm, DataRequest.dataset, ResultResponse.file, ...
const fileField = 1
