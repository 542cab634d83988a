// Package lines reads text line by line in bounded memory, for output of
// programs cvmd does not control (algorithms, children): a line longer than
// the limit is handed over in pieces, never buffered whole and never an
// error. A reader that stopped at a long line would leave the writer's pipe
// unread, and the writer would block or die of SIGPIPE.
//
// It imports the standard library only; the supervisor and children use it.
package lines

import (
	"bufio"
	"io"
	"strings"
	"unicode/utf8"
)

// MinMax is the smallest piece size Each uses.
const MinMax = 16

// Each reads r until EOF or a read error and calls emit for every line,
// without its newline (nor a \r before it). A line longer than max bytes is
// emitted in pieces of at most max bytes; every piece but the line's last
// has more set. Invalid UTF-8 is replaced with U+FFFD and the piece cut back
// at a rune boundary to stay within max, so every piece is valid UTF-8 (a
// protobuf string). max below MinMax counts as MinMax.
func Each(r io.Reader, max int, emit func(line string, more bool)) {
	max = maxOf(max, MinMax)
	br := bufio.NewReaderSize(r, max)
	for {
		b, err := br.ReadSlice('\n')
		more := err == bufio.ErrBufferFull
		if len(b) > 0 {
			s := string(b)
			if !more {
				s = strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
			}
			if !utf8.ValidString(s) {
				// Each invalid byte becomes a 3-byte U+FFFD, which can push
				// the piece past max: cut it back at a rune boundary.
				s = strings.ToValidUTF8(s, "\uFFFD")
				for len(s) > max {
					_, size := utf8.DecodeLastRuneInString(s)
					s = s[:len(s)-size]
				}
			}
			if s != "" || err == nil || more {
				emit(s, more)
			}
		}
		if err != nil && !more {
			return
		}
	}
}

func maxOf(a, b int) int {
	if a > b {
		return a
	}
	return b
}
