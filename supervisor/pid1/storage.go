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

	"github.com/cvmd/cvmd/attest"
)

// What the supervisor proper reads of the storage PID 1 set up: the fact it
// measures, the limits sized by it, the results directories on the disk,
// and the kernel's reports of blocks that failed their tag.

// storageRecord is StorageFile's content. Dev ties it to the mount: a
// record about another file system (a stale file, a --state elsewhere) is
// ignored.
type storageRecord struct {
	StateRoot string         `json:"state_root"`
	Dev       uint64         `json:"dev"`
	Storage   attest.Storage `json:"storage"`
}

func (r storageRecord) matches() bool {
	var st unix.Stat_t
	return unix.Stat(r.StateRoot, &st) == nil && st.Dev == r.Dev
}

func writeStorageRecord(path, stateRoot string, s attest.Storage) error {
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
func StorageOf(stateRoot string) attest.Storage {
	if r, err := readStorageRecord(StorageFile); err == nil && r.StateRoot == filepath.Clean(stateRoot) && r.matches() {
		return r.Storage
	}
	return attest.Storage{Kind: attest.StorageHostDir, FS: fsName(stateRoot), SizeBytes: fsSize(stateRoot)}
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
func BudgetFor(s attest.Storage, resultsCap int64) Budget {
	if s.Kind == attest.StorageHostDir {
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
		ResultsOnDisk: s.Kind == attest.StorageDisk,
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
	quotaBlockBytes     = 1024       // QIF_DQBLKSIZE
	firstResultsProject = 1 << 20    // project ids of results dirs start here
)

// MakeQuotaDir makes dir (which must not exist) on the scratch file system,
// owned by uid:gid, and caps what can be written under it at limit bytes
// with an ext4 project quota: a write past the cap fails with EDQUOT, and
// statfs on the directory reports the cap as its size (so usage and
// fullness read as on a tmpfs of that size). id numbers the directory
// among the live ones. RemoveQuotaDir undoes it.
func MakeQuotaDir(dir string, id uint64, limit int64, uid, gid int) error {
	if limit <= 0 {
		return fmt.Errorf("pid1: results cap %d", limit)
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
		q := ifDqblk{BHardLimit: uint64(limit+quotaBlockBytes-1) / quotaBlockBytes, Valid: qifBLimits}
		q.BSoftLimit = q.BHardLimit
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

// RemoveQuotaDir removes a directory MakeQuotaDir made, with its contents,
// and lifts its quota.
func RemoveQuotaDir(dir string, id uint64) error {
	parent, err := os.Open(filepath.Dir(dir))
	if err == nil {
		proj := uint32(firstResultsProject + id%(1<<30))
		q := ifDqblk{Valid: qifBLimits}
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
