package table

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
)

// Canonical returns the table's canonical encoding: JSON with fields in
// declaration order, children in start order, no insignificant space.
// Durations are in nanoseconds. This is what Hash covers and what is
// measured into the vTPM.
func (t *Table) Canonical() ([]byte, error) { return json.Marshal(t) }

// Hash returns SHA-256 of the canonical encoding.
func (t *Table) Hash() [32]byte {
	b, err := t.Canonical()
	if err != nil {
		panic(fmt.Sprintf("table: not encodable: %v", err)) // only plain data inside
	}
	return sha256.Sum256(b)
}

// HashHex is Hash in hex.
func (t *Table) HashHex() string {
	h := t.Hash()
	return hex.EncodeToString(h[:])
}

// Print writes the table for humans (indented JSON) followed by its hash.
func (t *Table) Print(w io.Writer) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\nsha256 %s\n", b, t.HashHex())
	return err
}
