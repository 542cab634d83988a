package attest

import (
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/json"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/cvmd/cvmd/attest/strictcbor"
)

// PCRs cvmd extends.
//
// MeasurePCR (15) holds cvmd's own measurements: the platform label, the
// supervisor's child table hash and every child start. PCR 15 is in the
// "static OS" range 8–15, so unlike 16 (debug) and 23 (application) it cannot
// be reset at locality 0 without a TPM reset (reboot): a process that reaches
// the TPM can add events but cannot erase the history. Nothing in cvmd's boot
// chain (firmware 0–7, GRUB 8–9, IMA 10, shim 14) uses it; systemd, which
// uses 15 for machine-id and volume keys, is not in the image.
//
// ManifestPCR (16) receives the computation manifest exactly as Cocos extends
// it (§1.3), so Cocos-side policies keep working.
const (
	MeasurePCR  = 15
	ManifestPCR = 16
)

// Event types.
const (
	EventPlatform   = "platform"    // first event: what TPM/SNP this is, simulated or not
	EventChildTable = "child-table" // the supervisor's child table hash, at boot
	EventChildStart = "child-start" // a child (re)started with this sandbox spec
	EventStorage    = "storage"     // where the computation's files live (memory or the encrypted scratch disk), at boot
	EventManifest   = "manifest"    // PCR 16: a computation manifest
	EventBoot       = "boot"        // the supervisor's boot id, before its child table
)

// MaxEventData bounds Event.Data for PCR 15 events (TPM2_PCR_Event takes at
// most 1024 bytes, and the event prefix takes some).
const MaxEventData = 900

// MaxEvents bounds the log (a restart loop must not grow tokens forever).
const MaxEvents = 4096

// Event is one entry of the measurement log.
type Event struct {
	PCR    uint32 `cbor:"1,keyasint" json:"pcr"`
	Type   string `cbor:"2,keyasint" json:"type"`
	Data   []byte `cbor:"3,keyasint" json:"data"`
	BootID string `cbor:"4,keyasint,omitempty" json:"boot_id,omitempty"`
	Seq    uint64 `cbor:"5,keyasint,omitempty" json:"seq,omitempty"`
}

// EventBytes is what TPM2_PCR_Event hashes into every bank for a PCR 15 event.
func (e *Event) EventBytes() []byte {
	b := make([]byte, 0, len("cvmd:")+len(e.Type)+1+len(e.Data))
	b = append(b, "cvmd:"...)
	b = append(b, e.Type...)
	b = append(b, 0)
	return append(b, e.Data...)
}

// Digest returns the digest extended into the SHA-256 bank.
func (e *Event) Digest() ([]byte, error) {
	switch {
	case e.PCR == ManifestPCR && e.Type == EventManifest:
		if len(e.Data) != 32+48 {
			return nil, fmt.Errorf("attest: manifest event data is %d bytes, want 80", len(e.Data))
		}
		return e.Data[:32], nil
	case e.PCR == MeasurePCR:
		d := sha256.Sum256(e.EventBytes())
		return d[:], nil
	}
	return nil, fmt.Errorf("attest: event %q on PCR %d is not a cvmd event", e.Type, e.PCR)
}

// Validate checks an event before it is extended.
func (e *Event) Validate() error {
	switch {
	case e.PCR == MeasurePCR && (e.Type == EventPlatform || e.Type == EventChildTable || e.Type == EventChildStart || e.Type == EventBoot || e.Type == EventStorage):
		if len(e.Data) > MaxEventData {
			return fmt.Errorf("attest: %s event data is %d bytes, at most %d", e.Type, len(e.Data), MaxEventData)
		}
		if !json.Valid(e.Data) {
			return fmt.Errorf("attest: %s event data is not JSON", e.Type)
		}
		return nil
	case e.PCR == ManifestPCR && e.Type == EventManifest:
		_, err := e.Digest()
		return err
	}
	return fmt.Errorf("attest: event type %q on PCR %d not allowed", e.Type, e.PCR)
}

// ManifestEvent is the PCR 16 event for a manifest: SHA3-256 ‖ SHA3-384 of its JSON.
func ManifestEvent(manifestJSON []byte) Event {
	a := sha3.Sum256(manifestJSON)
	b := sha3.Sum384(manifestJSON)
	return Event{PCR: ManifestPCR, Type: EventManifest, Data: append(a[:], b[:]...)}
}

// PlatformInfo is the data of the platform event.
type PlatformInfo struct {
	TPM       string `json:"tpm"`             // "simulator" or the device path
	SNP       string `json:"snp,omitempty"`   // "", "simulated", "hardware"
	TDX       string `json:"tdx,omitempty"`   // "", "simulated", "hardware"
	Azure     string `json:"azure,omitempty"` // "", "simulated", "hardware": an HCL report in the vTPM
	Simulated bool   `json:"simulated"`
	// NoPlatform says what the attestation mode needs that the VM lacks (a
	// forced SEV-SNP on a VM with only a TPM, say): evidence is refused.
	NoPlatform string `json:"no_platform,omitempty"`
}

// Boot is the data of a boot event: the supervisor's random id for this boot.
type Boot struct {
	BootID string `json:"boot_id"`
}

// BootID returns the boot id of the log's last boot event, or "".
func (l EventLog) BootID() string {
	id := ""
	for _, e := range l {
		if e.PCR != MeasurePCR || e.Type != EventBoot {
			continue
		}
		var b Boot
		if json.Unmarshal(e.Data, &b) == nil {
			id = b.BootID
		}
	}
	return id
}

// ChildTable is the data of a child-table event.
type ChildTable struct {
	SHA256   string   `json:"sha256"` // hex of the canonical child table hash
	Children []string `json:"children,omitempty"`
}

// ChildStart is the data of a child-start event.
type ChildStart struct {
	Child      string `json:"child"`
	Generation uint32 `json:"generation"`
	SpecSHA256 string `json:"spec_sha256,omitempty"` // hex of the child's sandbox spec
	// ComputationID is the computation running when the child started.
	ComputationID string `json:"computation_id,omitempty"`
}

// Storage kinds (Storage.Kind).
const (
	// StorageDisk is the scratch disk: dm-crypt with authenticated
	// encryption over dm-integrity, keyed by a random key made in the guest
	// at boot and kept only in its kernel.
	StorageDisk = "disk"
	// StorageMemory is a tmpfs in the guest's (encrypted) memory.
	StorageMemory = "memory"
	// StorageHostDir is a directory of the host (development mode): not
	// confidential.
	StorageHostDir = "host-dir"
)

// Storage is the data of a storage event: where the computation's files
// (datasets, results, the runner's work dir, the log queue) live.
type Storage struct {
	Kind      string `json:"kind"`       // StorageDisk, StorageMemory or StorageHostDir
	FS        string `json:"fs"`         // "ext4", "tmpfs", ...
	SizeBytes uint64 `json:"size_bytes"` // the file system's size
	// For StorageDisk: the virtio disk, its size, and the layout.
	Disk        string `json:"disk,omitempty"`   // kernel name, e.g. "vdb"
	Serial      string `json:"serial,omitempty"` // the disk's virtio serial
	DiskBytes   uint64 `json:"disk_bytes,omitempty"`
	Cipher      string `json:"cipher,omitempty"`    // dm-crypt cipher spec, e.g. "capi:gcm(aes)-random"
	KeyBits     int    `json:"key_bits,omitempty"`  // 256
	Integrity   string `json:"integrity,omitempty"` // "aead": dm-integrity stores dm-crypt's AEAD tag and IV per sector
	Journal     string `json:"journal,omitempty"`   // dm-integrity mode: "D" (direct: no journal; the disk is rebuilt each boot)
	TagBytes    int    `json:"tag_bytes,omitempty"` // bytes of tag+IV per sector
	SectorBytes int    `json:"sector_bytes,omitempty"`
	// Reason says why the storage is not the disk, when it is not.
	Reason string `json:"reason,omitempty"`
}

// JSONEvent builds a PCR 15 event whose data is v as JSON.
func JSONEvent(typ string, v any) (Event, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Event{}, err
	}
	e := Event{PCR: MeasurePCR, Type: typ, Data: b}
	return e, e.Validate()
}

// EventLog is the ordered list of events, oldest first.
type EventLog []Event

// Replay computes the SHA-256 bank value of pcr after the events of the log
// that target it, from all zeros.
func (l EventLog) Replay(pcr uint32) ([]byte, error) {
	v := make([]byte, sha256.Size)
	for i := range l {
		if l[i].PCR != pcr {
			continue
		}
		d, err := l[i].Digest()
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		h := sha256.New()
		h.Write(v)
		h.Write(d)
		v = h.Sum(nil)
	}
	return v, nil
}

// ReplaySHA384 is Replay for the SHA-384 bank (used to mirror the banks).
func (l EventLog) ReplaySHA384(pcr uint32) ([]byte, error) {
	v := make([]byte, sha512.Size384)
	for i := range l {
		if l[i].PCR != pcr {
			continue
		}
		var d []byte
		if l[i].PCR == ManifestPCR {
			if len(l[i].Data) != 80 {
				return nil, fmt.Errorf("event %d: manifest data is %d bytes", i, len(l[i].Data))
			}
			d = l[i].Data[32:]
		} else {
			s := sha512.Sum384(l[i].EventBytes())
			d = s[:]
		}
		h := sha512.New384()
		h.Write(v)
		h.Write(d)
		v = h.Sum(nil)
	}
	return v, nil
}

// MarshalLog encodes the log as a CBOR array.
func MarshalLog(l EventLog) ([]byte, error) {
	if l == nil {
		l = EventLog{}
	}
	return cbor.Marshal(l)
}

// ParseLog decodes a log produced by MarshalLog, refusing trailing bytes and
// events that are not cvmd events.
func ParseLog(b []byte) (EventLog, error) {
	var l EventLog
	if err := strictcbor.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("attest: decoding event log: %w", err)
	}
	if len(l) > MaxEvents {
		return nil, fmt.Errorf("attest: event log has %d events, at most %d", len(l), MaxEvents)
	}
	for i := range l {
		if err := l[i].Validate(); err != nil {
			return nil, fmt.Errorf("attest: event log entry %d: %w", i, err)
		}
	}
	return l, nil
}
