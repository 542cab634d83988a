package logfwd

import "errors"

var (
	// errShort means the bytes end before the record does: a torn tail, or
	// more to read.
	errShort = errors.New("logfwd: record truncated")
	// errCorrupt means the bytes at this position are not a valid record.
	errCorrupt = errors.New("logfwd: record corrupt")
	// errQueueClosed is the result of an append made after Close.
	errQueueClosed = errors.New("logfwd: queue closed")
)

// invalidBatch is a Push batch refused without storing anything (a record
// over the size limit); the stream ends with InvalidArgument.
type invalidBatch struct{ msg string }

func (e *invalidBatch) Error() string { return e.msg }
