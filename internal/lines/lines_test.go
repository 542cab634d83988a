package lines

import (
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

type piece struct {
	s    string
	more bool
}

func collect(in string, max int) []piece {
	var out []piece
	Each(strings.NewReader(in), max, func(s string, more bool) { out = append(out, piece{s, more}) })
	return out
}

func TestEach(t *testing.T) {
	long := strings.Repeat("x", 40)
	for _, c := range []struct {
		name, in string
		max      int
		want     []piece
	}{
		{"lines", "a\nb\r\nc", 16, []piece{{"a", false}, {"b", false}, {"c", false}}},
		{"nothing", "", 16, nil},
		{"empty line between", "a\n\nb\n", 16, []piece{{"a", false}, {"", false}, {"b", false}}},
		{"empty lines kept", "\n\n", 16, []piece{{"", false}, {"", false}}},
		{"no trailing empty piece", "a\n", 16, []piece{{"a", false}}},
		{"long line in pieces", long + "\nend\n", 16, []piece{{long[:16], true}, {long[:16], true}, {long[:8], false}, {"end", false}}},
		{"long line exactly max", long[:16] + "\n", 16, []piece{{long[:16], true}, {"", false}}},
		{"max below the minimum", long[:20] + "\n", 1, []piece{{long[:16], true}, {long[:4], false}}},
		{"invalid UTF-8 replaced", "a\xffb\n", 16, []piece{{"a\uFFFDb", false}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := collect(c.in, c.max)
			if len(got) != len(c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("piece %d: got %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

// TestEachReadsPastAHugeLine: a 1 MiB line does not stop the reading; what
// follows it arrives.
func TestEachReadsPastAHugeLine(t *testing.T) {
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte(strings.Repeat("y", 1<<20) + "\nafter\n"))
		pw.Close()
	}()
	total, last := 0, ""
	Each(pr, 64<<10, func(s string, more bool) {
		if len(s) > 64<<10 {
			t.Fatalf("piece of %d bytes", len(s))
		}
		total += len(s)
		last = s
	})
	if total != 1<<20+len("after") || last != "after" {
		t.Fatalf("read %d bytes, last %q", total, last)
	}
}

func FuzzEach(f *testing.F) {
	f.Add([]byte("a\nb\xff\xfe\r\n"), 16)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		max = max % 4096
		total := 0
		Each(strings.NewReader(string(in)), max, func(s string, more bool) {
			if len(s) > maxOf(max, MinMax) || !utf8.ValidString(s) {
				t.Fatalf("piece %q (max %d)", s, max)
			}
			total += len(s)
		})
		if utf8.Valid(in) && !strings.Contains(string(in), "\r") && total != len(in)-strings.Count(string(in), "\n") {
			t.Fatalf("%d bytes out of %d (newlines excluded)", total, len(in))
		}
	})
}
