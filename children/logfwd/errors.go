package logfwd

import "errors"

var (
	// errShort means the bytes end before the record does: a torn tail, or
	// more to read.
	errShort = errors.New("logfwd: record truncated")
	// errCorrupt means the bytes at this position are not a valid record.
	errCorrupt = errors.New("logfwd: record corrupt")
	// errQueueClosed is the result of an append made after Close, or still
	// waiting for the committer when Close stopped it: nothing of it was
	// stored, and the client sends it again to the next logfwd.
	errQueueClosed = errors.New("logfwd: queue closed; the append was not stored")
)

// invalidBatch is a Push batch refused without storing anything (a record
// over the size limit); the stream ends with InvalidArgument.
type invalidBatch struct{ msg string }

func (e *invalidBatch) Error() string { return e.msg }
