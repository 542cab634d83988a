package runner

import (
	"bufio"
	"io"
	"strings"
	"unicode/utf8"
)

// streamLines reads r until EOF and calls emit for every line (without its
// newline). A line longer than max bytes is emitted in max-byte pieces, so
// memory stays bounded whatever the algorithm prints. Invalid UTF-8 is
// replaced, so every record is valid protobuf string. max is at least 16.
func streamLines(r io.Reader, maxLine int, emit func(string)) {
	br := bufio.NewReaderSize(r, max(maxLine, 16))
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			s := strings.TrimSuffix(string(line), "\n")
			s = strings.TrimSuffix(s, "\r")
			if !utf8.ValidString(s) {
				// Each invalid byte becomes a 3-byte U+FFFD, which can push
				// the line past maxLine: cut it back at a rune boundary.
				s = strings.ToValidUTF8(s, "\uFFFD")
				for len(s) > maxLine {
					_, size := utf8.DecodeLastRuneInString(s)
					s = s[:len(s)-size]
				}
			}
			if s != "" || err == nil {
				emit(s)
			}
		}
		switch err {
		case nil, bufio.ErrBufferFull:
			continue
		default:
			return
		}
	}
}
