package agent

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cvmd/cvmd/cocos/zipdir"
)

// Errors the agent returns to clients. Their texts are Cocos's where Cocos
// has one, so that scripts written against Cocos see the same words; the
// gRPC code is ours (Cocos sends Unknown for all of them).
var (
	// ErrWrongState: the request is not allowed in the current state.
	ErrWrongState = errors.New("agent not expecting this operation in the current state")
	// ErrHashMismatch: an upload's SHA3-256 differs from the manifest's.
	ErrHashMismatch = errors.New("malformed data, hash does not match manifest")
	// ErrAlgorithmNotDeclared: the manifest has no algorithm to upload.
	ErrAlgorithmNotDeclared = errors.New("algorithm not declared in computation manifest")
	// ErrDatasetNotDeclared: no dataset of the manifest has that filename.
	ErrDatasetNotDeclared = errors.New("dataset not declared in computation manifest")
	// ErrBadFilename: a dataset filename that is empty or not a plain name.
	ErrBadFilename = errors.New("malformed data, filename does not match manifest")
	// ErrAllReceived: every declared item was already received.
	ErrAllReceived = errors.New("all expected manifest Items have been received")
	// ErrResultsNotReady: results were asked for before the run ended.
	ErrResultsNotReady = errors.New("computation results are not yet ready")
	// ErrUndeclaredConsumer: the signature is no declared consumer's.
	ErrUndeclaredConsumer = errors.New("result consumer is undeclared in computation manifest")
	// ErrEmptyAlgorithm, ErrEmptyDataset: an upload with no bytes.
	ErrEmptyAlgorithm = errors.New("algorithm binary is required")
	ErrEmptyDataset   = errors.New("dataset is required")
	// ErrUnauthenticated: missing or invalid signature metadata.
	ErrUnauthenticated = errors.New("request is not authenticated")
	// ErrPermissionDenied: a valid signature by a key that may not do this.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrTooLarge: an upload over the configured limit.
	ErrTooLarge = errors.New("upload exceeds the agent's size limit")
	// ErrNoSpace: accepting the upload would leave too little free disk.
	ErrNoSpace = errors.New("not enough free disk space in the agent")
	// ErrInvalidArgument: a malformed request field (nonce sizes, type).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrRunFailed: the computation failed; results will never exist.
	ErrRunFailed = errors.New("computation failed")
	// ErrUnavailable: a feature this platform does not have (IMA).
	ErrUnavailable = errors.New("not available")
	// ErrNoComputation: a control request with no computation running.
	ErrNoComputation = errors.New("no computation")
	// ErrUndecryptable: an encrypted upload whose key the KBS did not
	// release, or that does not decrypt under it.
	ErrUndecryptable = errors.New("malformed data, the encrypted upload was not decrypted")
	// ErrNotSupported: a platform feature this VM lacks (an Azure token
	// off Azure, or where it is not implemented).
	ErrNotSupported = errors.New("not supported on this platform")
	// ErrUpstream: a remote service the agent asked on a client's behalf
	// (MAA) could not be reached or refused.
	ErrUpstream = errors.New("remote service failed")
	// ErrBusy: a Start while another computation is active.
	ErrBusy = errors.New("another computation is active")
)

// toStatus is the one place where agent errors become gRPC statuses (style
// 12). Known classes keep their full text (it starts with the Cocos words);
// anything else is logged and leaves as Internal with a fixed text.
func toStatus(log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isOurs(err) {
		return err // already a status (e.g. the client went away)
	}
	var code codes.Code
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, ErrWrongState), errors.Is(err, ErrAllReceived), errors.Is(err, ErrResultsNotReady),
		errors.Is(err, ErrRunFailed), errors.Is(err, ErrUnavailable), errors.Is(err, ErrNoComputation), errors.Is(err, ErrBusy):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrHashMismatch), errors.Is(err, ErrBadFilename), errors.Is(err, ErrUndecryptable), errors.Is(err, ErrEmptyAlgorithm),
		errors.Is(err, ErrEmptyDataset), errors.Is(err, ErrInvalidArgument), errors.Is(err, zipdir.ErrUnsafeEntry),
		errors.Is(err, zipdir.ErrNotZip):
		code = codes.InvalidArgument
	case errors.Is(err, ErrAlgorithmNotDeclared), errors.Is(err, ErrDatasetNotDeclared):
		code = codes.NotFound
	case errors.Is(err, ErrNotSupported):
		code = codes.Unimplemented
	case errors.Is(err, ErrUpstream):
		code = codes.Unavailable
	case errors.Is(err, ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, ErrUndeclaredConsumer), errors.Is(err, ErrPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrNoSpace), errors.Is(err, zipdir.ErrTooLarge):
		code = codes.ResourceExhausted
	default:
		log.Error("request failed", "method", method, "err", err)
		return status.Error(codes.Internal, "agent internal error (details in the agent's log)")
	}
	if code != codes.Canceled {
		log.Info("request refused", "method", method, "code", code.String(), "err", err)
	}
	return status.Error(code, err.Error())
}

// isOurs reports whether err wraps one of our classes (which may also carry
// a status from a wrapped gRPC error, e.g. the runner's).
func isOurs(err error) bool {
	for _, e := range []error{ErrWrongState, ErrHashMismatch, ErrRunFailed, ErrUnavailable, ErrInvalidArgument, ErrTooLarge, ErrNoSpace} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
