package verify_test

import (
	"testing"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/attest/verify"
)

// The storage event says where the computation's files live; a policy can
// require the encrypted, authenticated scratch disk (or memory).
func TestStoragePolicy(t *testing.T) {
	disk := attest.Storage{Kind: attest.StorageDisk, FS: "ext4", SizeBytes: 8 << 30, Disk: "vdb", Cipher: "capi:gcm(aes)-random",
		KeyBits: 256, Integrity: "aead", Journal: "D", TagBytes: 28, SectorBytes: 4096}
	memory := attest.Storage{Kind: attest.StorageMemory, FS: "tmpfs", SizeBytes: 1 << 30, Reason: "no scratch disk"}
	unauthenticated := disk
	unauthenticated.Integrity = ""
	tests := []struct {
		name    string
		events  []attest.Storage
		require string
		check   string // "" = must pass
	}{
		{"disk required, disk measured", []attest.Storage{disk}, "disk", ""},
		{"memory required, memory measured", []attest.Storage{memory}, "memory", ""},
		{"nothing required", []attest.Storage{memory}, "", ""},
		{"disk required, memory measured", []attest.Storage{memory}, "disk", "cvmd.storage"},
		{"disk required, no event", nil, "disk", "cvmd.storage"},
		{"disk required, no integrity", []attest.Storage{unauthenticated}, "disk", "cvmd.storage"},
		{"disk required, a later start in memory", []attest.Storage{disk, memory}, "disk", "cvmd.storage"},
		{"unknown requirement", []attest.Storage{disk}, "floppy", "cvmd.storage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, true, nil)
			for _, st := range tc.events {
				f.extend(t, attest.EventStorage, st)
			}
			nonce := random(t, 32)
			tok, err := f.a.Attest(attest.Request{Nonce: nonce, Platform: attest.VTPM})
			if err != nil {
				t.Fatal(err)
			}
			pol := &verify.Policy{CVMD: verify.CVMDPolicy{TrustedAKSHA256: []string{f.akPin()}, Storage: tc.require}}
			r, err := verify.Token(tok, verify.Options{Nonce: nonce, Policy: pol, AllowSimulated: true})
			if tc.check != "" {
				wantCheck(t, err, tc.check)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			last := tc.events[len(tc.events)-1]
			if r.Storage == nil || *r.Storage != last {
				t.Fatalf("result storage %+v, want %+v", r.Storage, last)
			}
		})
	}
}
