package pid1

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var scratchTests = []struct {
	in      string
	want    ScratchChoice
	wantErr string
}{
	{"", ScratchChoice{Serial: DefaultScratchSerial}, ""},
	{"none", ScratchChoice{None: true}, ""},
	{"serial:data-1", ScratchChoice{Serial: "data-1"}, ""},
	{"vdb", ScratchChoice{Disk: "vdb"}, ""},
	{"/dev/vdc", ScratchChoice{Disk: "vdc"}, ""},
	{"vdaa", ScratchChoice{Disk: "vdaa"}, ""},
	{"serial:", ScratchChoice{}, "serial"},
	{"serial:a/b", ScratchChoice{}, "serial"},
	{"serial:123456789012345678901", ScratchChoice{}, "serial"},
	{"sda", ScratchChoice{}, "want"},
	{"/dev/../vdb", ScratchChoice{}, "want"},
	{"vd1", ScratchChoice{}, "want"},
	{"vd", ScratchChoice{}, "want"},
}

func TestParseScratch(t *testing.T) {
	for _, tt := range scratchTests {
		got, err := ParseScratch(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), ScratchParam) {
				t.Errorf("ParseScratch(%q) = %+v, %v; want an error naming %s and %q", tt.in, got, err, ScratchParam, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseScratch(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParseScratch(f *testing.F) {
	for _, tt := range scratchTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseScratch(s)
		if err != nil {
			return
		}
		if c.Disk != "" && !validDiskName(c.Disk) || strings.ContainsAny(c.Serial, " /\x00") {
			t.Fatalf("ParseScratch(%q) accepted %+v", s, c)
		}
	})
}

// fakeBlock makes a /sys/block with the given disks.
func fakeBlock(t *testing.T, disks ...Disk) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range disks {
		p := filepath.Join(dir, d.Name)
		os.MkdirAll(p, 0o755)
		ro := "0"
		if d.ReadOnly {
			ro = "1"
		}
		for f, v := range map[string]string{"serial": d.Serial, "ro": ro, "size": strconv.FormatUint(d.Bytes/512, 10), "dev": fmt.Sprintf("%d:%d", d.Major, d.Minor)} {
			os.WriteFile(filepath.Join(p, f), []byte(v+"\n"), 0o644)
		}
	}
	os.MkdirAll(filepath.Join(dir, "loop0"), 0o755) // not a virtio disk: ignored
	return dir
}

func TestDisksAndFindDisk(t *testing.T) {
	scratch := Disk{Name: "vdb", Serial: "cvmd-scratch", Bytes: 8 << 30, Major: 254, Minor: 16}
	other := Disk{Name: "vda", Serial: "root", Bytes: 1 << 30, Major: 254, Minor: 0, ReadOnly: true}
	disks, err := Disks(fakeBlock(t, scratch, other))
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 {
		t.Fatalf("Disks = %+v, want vda and vdb", disks)
	}
	for _, tc := range []struct {
		choice ScratchChoice
		want   Disk
		ok     bool
	}{
		{ScratchChoice{Serial: DefaultScratchSerial}, scratch, true},
		{ScratchChoice{Disk: "vda"}, other, true},
		{ScratchChoice{Serial: "nothere"}, Disk{}, false},
		{ScratchChoice{Disk: "vdz"}, Disk{}, false},
		{ScratchChoice{None: true}, Disk{}, false},
	} {
		got, ok := FindDisk(tc.choice, disks)
		if ok != tc.ok || got != tc.want {
			t.Errorf("FindDisk(%+v) = %+v, %v; want %+v, %v", tc.choice, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBudgetFor(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	tests := []struct {
		name                     string
		st                       Storage
		cap                      int64
		logQueue, results, floor int64
		onDisk                   bool
	}{
		{"8 GiB disk", Storage{Kind: StorageDisk, SizeBytes: 8 * gib}, 0, 256 * mib, 512 * mib, 256*mib + 1024*mib + 128*mib, true},
		{"100 GiB disk", Storage{Kind: StorageDisk, SizeBytes: 100 * gib}, 0, 256 * mib, 6400 * mib, 256*mib + 12800*mib + 1*gib, true},
		{"1 GiB of memory", Storage{Kind: StorageMemory, SizeBytes: 1 * gib}, 0, 64 * mib, 64 * mib, 64*mib + 128*mib + 16*mib, false},
		{"16 GiB of memory", Storage{Kind: StorageMemory, SizeBytes: 16 * gib}, 0, 256 * mib, 512 * mib, 256*mib + 1024*mib + 256*mib, false},
		{"small memory", Storage{Kind: StorageMemory, SizeBytes: 128 * mib}, 0, 8 * mib, 16 * mib, 8*mib + 32*mib + 16*mib, false},
		{"explicit results cap", Storage{Kind: StorageDisk, SizeBytes: 8 * gib}, 100 * mib, 256 * mib, 100 * mib, 256*mib + 200*mib + 128*mib, true},
		{"host directory keeps the defaults", Storage{Kind: StorageHostDir, SizeBytes: 500 * gib}, 0, 256 * mib, 512 * mib, 64 * mib, false},
	}
	for _, tt := range tests {
		b := BudgetFor(tt.st, tt.cap)
		want := Budget{LogQueueBytes: tt.logQueue, ResultsBytes: tt.results, AgentMinFreeBytes: tt.floor, ResultsOnDisk: tt.onDisk}
		if b != want {
			t.Errorf("%s: BudgetFor = %+v, want %+v", tt.name, b, want)
		}
		if tt.st.Kind != StorageHostDir && b.AgentMinFreeBytes+b.ResultsBytes > int64(tt.st.SizeBytes) {
			t.Errorf("%s: the floor and the results (%d) exceed the storage (%d)", tt.name, b.AgentMinFreeBytes+b.ResultsBytes, tt.st.SizeBytes)
		}
	}
}

func TestParseIntegrityError(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want IntegrityError
		ok   bool
	}{
		{"device-mapper: crypt: dm-1: INTEGRITY AEAD ERROR, sector 262144", IntegrityError{Device: "dm-1", Sector: 262144}, true},
		{"trusted_key: device-mapper: crypt: dm-3: INTEGRITY AEAD ERROR, sector 8", IntegrityError{Device: "dm-3", Sector: 8}, true},
		{"device-mapper: crypt: dm-1: INTEGRITY AEAD ERROR, sector x", IntegrityError{}, false},
		{"EXT4-fs error (device dm-1): ext4_find_entry", IntegrityError{}, false},
	} {
		got, ok := ParseIntegrityError(tc.msg)
		got.Line = ""
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseIntegrityError(%q) = %+v, %v; want %+v, %v", tc.msg, got, ok, tc.want, tc.ok)
		}
	}
}

// The DM_TABLE_LOAD payload: each dm_target_spec, its NUL-terminated
// parameters, 8-byte aligned, next = the spec's own length.
func TestDMTable(t *testing.T) {
	b, err := dmTable([]dmTarget{
		{Start: 0, Length: 8, Type: "integrity", Params: "254:16 0 28 D 1 block_size:4096"},
		{Start: 8, Length: 16, Type: "linear", Params: "254:0 0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	next := ne.Uint32(b[20:])
	if next%8 != 0 || int(next) != dmSpecSize+((len("254:16 0 28 D 1 block_size:4096")+1+7)&^7) {
		t.Fatalf("next = %d", next)
	}
	if ne.Uint64(b[8:]) != 8 || string(b[24:33]) != "integrity" || b[33] != 0 {
		t.Fatalf("first spec %x", b[:40])
	}
	second := b[next:]
	if ne.Uint64(second[0:]) != 8 || ne.Uint64(second[8:]) != 16 || !strings.HasPrefix(string(second[dmSpecSize:]), "254:0 0\x00") {
		t.Fatalf("second spec %q", second)
	}
	if len(b)%8 != 0 {
		t.Fatalf("payload length %d not 8-aligned", len(b))
	}
	for _, bad := range []dmTarget{{Type: "", Params: "x"}, {Type: "a-type-name-too-long", Params: "x"}, {Type: "crypt", Params: "a\x00b"}} {
		if _, err := dmTable([]dmTarget{bad}); err == nil {
			t.Errorf("dmTable(%+v) accepted", bad)
		}
	}
	if _, err := dmRequest(strings.Repeat("n", 128), 0, 0, nil, 0); err == nil {
		t.Error("dmRequest accepted a 128-byte name")
	}
}

func TestStorageRecordIsTiedToTheMount(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	path := filepath.Join(t.TempDir(), "storage.json")
	st := Storage{Kind: StorageMemory, FS: "tmpfs", SizeBytes: 123}
	if err := writeStorageRecord(path, dir, st); err != nil {
		t.Fatal(err)
	}
	r, err := readStorageRecord(path)
	if err != nil || r.Storage != st || r.StateRoot != dir || !r.matches() {
		t.Fatalf("record %+v, %v", r, err)
	}
	r.StateRoot = other // another directory on the same file system would match: the dev is what differs across mounts
	r.Dev++
	if r.matches() {
		t.Fatal("a record about another device matches")
	}
	if _, err := readStorageRecord(filepath.Join(t.TempDir(), "none.json")); err != errNoRecord {
		t.Fatalf("missing record: %v", err)
	}
	if got := StorageOf(dir); got.Kind != StorageHostDir || got.SizeBytes == 0 {
		t.Fatalf("StorageOf a plain directory = %+v, want a host dir with its size", got)
	}
}

func TestMemoryReport(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	os.WriteFile(p, []byte("MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:    1024000 kB\nCached:           512000 kB\nDirty:              1024 kB\nHugePages_Total:       0\n"), 0o644)
	m, err := meminfo(p)
	if err != nil || m["MemTotal"] != 2048000 || m["MemAvailable"] != 1024000 || m["HugePages_Total"] != 0 {
		t.Fatalf("meminfo = %v, %v", m, err)
	}
	if r := memoryReport(); !strings.HasPrefix(r, "used_mib=") || !strings.Contains(r, "total_mib=") {
		t.Fatalf("memoryReport() = %q", r)
	}
}
