package tests

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/supervisor/pid1"
)

// pid1.Storage is what the guest measures; attest.Storage is how a
// verifier reads it (the layering keeps them apart): every field the guest
// writes must be read, and read back the same.
func TestStorageFactIsReadAsWritten(t *testing.T) {
	fact := pid1.Storage{Kind: pid1.StorageDisk, FS: "ext4", SizeBytes: 1, Disk: "vda", Serial: "s", DiskBytes: 2,
		Cipher: "c", KeyBits: 3, Integrity: "aead", Journal: "D", TagBytes: 4, SectorBytes: 5, Reason: "r"}
	b, err := json.Marshal(fact)
	if err != nil {
		t.Fatal(err)
	}
	var read attest.Storage
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&read); err != nil {
		t.Fatalf("attest.Storage does not read pid1.Storage %s: %v", b, err)
	}
	again, _ := json.Marshal(read)
	if !bytes.Equal(again, b) {
		t.Fatalf("read back as %s, written as %s", again, b)
	}
	for _, k := range [][2]string{{pid1.StorageDisk, attest.StorageDisk}, {pid1.StorageMemory, attest.StorageMemory}, {pid1.StorageHostDir, attest.StorageHostDir}} {
		if k[0] != k[1] {
			t.Errorf("storage kind %q in pid1, %q in attest", k[0], k[1])
		}
	}
}
