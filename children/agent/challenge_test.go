package agent

import (
	"bytes"
	"testing"
	"time"
)

// TestChallengeNonces: a nonce is good once, on the connection it was
// offered on, for its computation, until it expires; a connection holds a
// bounded number, and its nonces go when it ends.
func TestChallengeNonces(t *testing.T) {
	now := time.Now()
	c := newChallenges()
	issue := func(conn uint64, comp string) []byte {
		t.Helper()
		n, err := c.issue(conn, comp, now)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	n := issue(1, "comp-1")
	for _, tc := range []struct {
		name  string
		nonce []byte
		conn  uint64
		comp  string
		at    time.Time
		want  bool
	}{
		{"another connection", issue(1, "comp-1"), 2, "comp-1", now, false},
		{"another computation", issue(1, "comp-1"), 1, "comp-2", now, false},
		{"expired", issue(1, "comp-1"), 1, "comp-1", now.Add(challengeTTL + time.Second), false},
		{"never offered", bytes.Repeat([]byte{1}, 32), 1, "comp-1", now, false},
		{"short", []byte{1, 2, 3}, 1, "comp-1", now, false},
		{"untagged connection", issue(1, "comp-1"), 0, "comp-1", now, false},
		{"its own", n, 1, "comp-1", now, true},
		{"its own again", n, 1, "comp-1", now, false},
	} {
		if got := c.take(tc.nonce, tc.conn, tc.comp, tc.at); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// A refused attempt used the nonce up too: the right connection cannot
	// use it after a wrong one tried.
	m := issue(3, "comp-1")
	c.take(m, 4, "comp-1", now)
	if c.take(m, 3, "comp-1", now) {
		t.Error("a nonce tried on another connection was still good")
	}
	// Per connection, the oldest goes.
	var first []byte
	for i := range maxOffersPerConn + 1 {
		x, _ := c.issue(5, "comp-1", now.Add(time.Duration(i)*time.Millisecond))
		if i == 0 {
			first = x
		}
	}
	if c.take(first, 5, "comp-1", now) {
		t.Error("a connection kept more than maxOffersPerConn nonces")
	}
	last := issue(6, "comp-1")
	c.dropConn(6)
	if c.take(last, 6, "comp-1", now) {
		t.Error("a nonce outlived its connection")
	}
}
