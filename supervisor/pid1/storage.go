package pid1

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// What the supervisor proper reads of the storage PID 1 set up: the fact it
// measures, the limits sized by it, the results directories on the disk,
// and the kernel's reports of blocks that failed their tag.

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

// Storage says where the computation's files (datasets, results, the
// runner's work dir, the log queue: the state directory) live. Its JSON is
// the data of the storage event the supervisor measures into PCR 15;
// attest.Storage is the verifier's reading of it (tests/storage_test.go
// keeps the two in step).
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

// storageRecord is StorageFile's content. Dev ties it to the mount: a
// record about another file system (a stale file, a --state elsewhere) is
// ignored.
type storageRecord struct {
	StateRoot string  `json:"state_root"`
	Dev       uint64  `json:"dev"`
	Storage   Storage `json:"storage"`
}

func (r storageRecord) matches() bool {
	var st unix.Stat_t
	return unix.Stat(r.StateRoot, &st) == nil && st.Dev == r.Dev
}

func writeStorageRecord(path, stateRoot string, s Storage) error {
	var st unix.Stat_t
	if err := unix.Stat(stateRoot, &st); err != nil {
		return err
	}
	b, err := json.Marshal(storageRecord{StateRoot: stateRoot, Dev: st.Dev, Storage: s})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// errNoRecord is returned when there is no StorageFile.
var errNoRecord = errors.New("pid1: no storage record")

func readStorageRecord(path string) (storageRecord, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return storageRecord{}, errNoRecord
	}
	if err != nil {
		return storageRecord{}, err
	}
	var r storageRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return storageRecord{}, fmt.Errorf("pid1: %s: %w", path, err)
	}
	return r, nil
}

// StorageOf describes the storage of stateRoot: what PID 1 set up, when
// StorageFile is about that mount; otherwise (development mode, tests) a
// directory of the host, with the size of its file system.
func StorageOf(stateRoot string) Storage {
	if r, err := readStorageRecord(StorageFile); err == nil && r.StateRoot == filepath.Clean(stateRoot) && r.matches() {
		return r.Storage
	}
	return Storage{Kind: StorageHostDir, FS: fsName(stateRoot), SizeBytes: fsSize(stateRoot)}
}

// Budget is how the state root's space is shared out.
type Budget struct {
	// LogQueueBytes bounds logfwd's queue.
	LogQueueBytes int64
	// ResultsBytes caps one algorithm's results.
	ResultsBytes int64
	// AgentMinFreeBytes is the free space the agent keeps when it accepts
	// uploads: room for the log queue to fill and for the results to be
	// copied out and zipped (twice the cap), plus a margin.
	AgentMinFreeBytes int64
	// ResultsOnDisk says the results go to a directory of the scratch disk
	// capped by a project quota, rather than to a tmpfs in memory.
	ResultsOnDisk bool
}

// Memory-backed results are a tmpfs charged to the algorithm's memory: at
// most this, whatever the size of the root.
const maxMemoryResults = 512 << 20

// BudgetFor shares out s.SizeBytes (T): the log queue T/16 between 8 and
// 256 MiB, the results T/16 from 16 MiB (at most 512 MiB in memory) unless
// resultsCap (--algo-results-cap) is set, and the agent's floor the log
// queue, twice the results and T/64 between 16 MiB and 1 GiB. A host
// directory (development mode) keeps the children's defaults: the size of
// a workstation's disk says nothing about what a computation may use.
func BudgetFor(s Storage, resultsCap int64) Budget {
	if s.Kind == StorageHostDir {
		b := Budget{LogQueueBytes: 256 << 20, ResultsBytes: maxMemoryResults, AgentMinFreeBytes: 64 << 20}
		if resultsCap > 0 {
			b.ResultsBytes = resultsCap
		}
		return b
	}
	t := int64(s.SizeBytes)
	b := Budget{
		LogQueueBytes: clamp(t/16, 8<<20, 256<<20),
		ResultsBytes:  max(t/16, 16<<20),
		ResultsOnDisk: s.Kind == StorageDisk,
	}
	if !b.ResultsOnDisk {
		b.ResultsBytes = min(b.ResultsBytes, maxMemoryResults)
	}
	if resultsCap > 0 {
		b.ResultsBytes = resultsCap
	}
	b.AgentMinFreeBytes = b.LogQueueBytes + 2*b.ResultsBytes + clamp(t/64, 16<<20, 1<<30)
	return b
}

func clamp(v, lo, hi int64) int64 { return min(max(v, lo), hi) }

// Project quotas (linux/fs.h, linux/quota.h).
const (
	fsIOCGetXattr       = 0x801c581f // FS_IOC_FSGETXATTR
	fsIOCSetXattr       = 0x401c5820 // FS_IOC_FSSETXATTR
	fsXflagProjInherit  = 0x200      // FS_XFLAG_PROJINHERIT
	qSetQuota           = 0x800008   // Q_SETQUOTA
	prjQuota            = 2          // PRJQUOTA
	qifBLimits          = 1          // QIF_BLIMITS
	qifILimits          = 4          // QIF_ILIMITS
	quotaBlockBytes     = 1024       // QIF_DQBLKSIZE
	firstResultsProject = 1 << 20    // project ids of results dirs start here
)

// ResultsArea holds the algorithm sandboxes' results directories on the
// scratch disk, each capped by an ext4 project quota.
type ResultsArea struct{ dir string }

// NewResultsArea returns the area in dir, removing what a previous
// supervisor left there.
func NewResultsArea(dir string) (*ResultsArea, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("pid1: emptying the results area: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pid1: results area: %w", err)
	}
	return &ResultsArea{dir: dir}, nil
}

// Make makes the results directory of the sandbox called name (id numbers
// it among the live ones), owned by uid:gid, where at most limit bytes and
// files files and directories can be written: a write or a create past the
// cap fails with EDQUOT, and statfs on the directory reports the caps as
// its size and inode count (so usage and fullness read as on a tmpfs of
// that size). remove deletes it with its contents and lifts the quota.
func (a *ResultsArea) Make(name string, id uint64, limit int64, files uint64, uid, gid int) (dir string, remove func(), err error) {
	if !filepath.IsLocal(name) || strings.Contains(name, "/") {
		return "", nil, fmt.Errorf("pid1: results directory name %q", name)
	}
	dir = filepath.Join(a.dir, name)
	if err := makeQuotaDir(dir, id, limit, files, uid, gid); err != nil {
		return "", nil, err
	}
	return dir, func() { removeQuotaDir(dir, id) }, nil
}

// makeQuotaDir makes dir (which must not exist) with a project quota of
// limit bytes and files inodes, owned by uid:gid.
func makeQuotaDir(dir string, id uint64, limit int64, files uint64, uid, gid int) error {
	if limit <= 0 || files == 0 {
		return fmt.Errorf("pid1: results cap %d bytes, %d files", limit, files)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	err := func() error {
		f, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer f.Close()
		proj := uint32(firstResultsProject + id%(1<<30))
		var x fsxattr
		if err := fsxattrIoctl(f.Fd(), fsIOCGetXattr, &x); err != nil {
			return fmt.Errorf("reading the project of %s: %w", dir, err)
		}
		x.Projid = proj
		x.Xflags |= fsXflagProjInherit
		if err := fsxattrIoctl(f.Fd(), fsIOCSetXattr, &x); err != nil {
			return fmt.Errorf("setting project %d on %s: %w", proj, dir, err)
		}
		// Empty files take no blocks: the inode limit bounds them (the
		// file system's inodes are shared with the agent and the log queue).
		q := ifDqblk{BHardLimit: uint64(limit+quotaBlockBytes-1) / quotaBlockBytes, IHardLimit: files, Valid: qifBLimits | qifILimits}
		q.BSoftLimit, q.ISoftLimit = q.BHardLimit, q.IHardLimit
		if err := quotactlFD(f.Fd(), qSetQuota<<8|prjQuota, proj, &q); err != nil {
			return fmt.Errorf("setting the quota of project %d: %w", proj, err)
		}
		return f.Chown(uid, gid)
	}()
	if err != nil {
		os.Remove(dir)
		return fmt.Errorf("pid1: results directory: %w", err)
	}
	return nil
}

// removeQuotaDir removes a directory makeQuotaDir made, with its contents,
// and lifts its quota.
func removeQuotaDir(dir string, id uint64) error {
	parent, err := os.Open(filepath.Dir(dir))
	if err == nil {
		proj := uint32(firstResultsProject + id%(1<<30))
		q := ifDqblk{Valid: qifBLimits | qifILimits}
		quotactlFD(parent.Fd(), qSetQuota<<8|prjQuota, proj, &q)
		parent.Close()
	}
	return os.RemoveAll(dir)
}

// IntegrityError is one kernel report of a sector that failed its
// authentication tag: the host changed (or replaced) it, and the read
// returned EIO.
type IntegrityError struct {
	Device string // dm device, e.g. "dm-1"
	Sector uint64 // 512-byte sector of the volume
	Line   string // the kernel's line
}

// dm-crypt: "device-mapper: crypt: dm-1: INTEGRITY AEAD ERROR, sector 12345"
var integrityRE = regexp.MustCompile(`crypt: (\S+): INTEGRITY AEAD ERROR, sector (\d+)`)

// ParseIntegrityError recognises a kernel message about a failed tag.
func ParseIntegrityError(msg string) (IntegrityError, bool) {
	m := integrityRE.FindStringSubmatch(msg)
	if m == nil {
		return IntegrityError{}, false
	}
	sec, err := strconv.ParseUint(m[2], 10, 64)
	if err != nil {
		return IntegrityError{}, false
	}
	return IntegrityError{Device: m[1], Sector: sec, Line: strings.TrimSpace(msg)}, true
}

// WatchIntegrity follows the kernel log from now on and calls report for
// each failed tag, until ctx ends. The kernel rate-limits these messages;
// report is called at most once a second, with the first error of that
// second and how many came with it.
func WatchIntegrity(ctx context.Context, report func(e IntegrityError, count int)) error {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pid1: watching the kernel log: %w", err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return fmt.Errorf("pid1: watching the kernel log: %w", err)
	}
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		var first IntegrityError
		count := 0
		var last time.Time
		buf := make([]byte, 8192)
		for {
			// One read returns one record.
			n, err := f.Read(buf)
			if errors.Is(err, unix.EPIPE) {
				continue // records overwritten before we read them
			}
			if err != nil {
				return
			}
			rec, perr := ParseKmsg(string(buf[:n]))
			if perr != nil {
				continue
			}
			e, ok := ParseIntegrityError(rec.Message)
			if !ok {
				continue
			}
			if count == 0 {
				first = e
			}
			count++
			if time.Since(last) >= time.Second {
				report(first, count)
				last, count = time.Now(), 0
			}
		}
	}()
	return nil
}
