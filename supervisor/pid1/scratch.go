package pid1

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The scratch disk: where the computation's files (datasets, results, the
// runner's work dir, the log queue: everything under StateRoot) live when
// the VM has a disk for them, instead of the guest's memory.
//
// At every boot PID 1 makes a fresh volume on it: a random 256-bit key made
// in the guest (getrandom) and handed to the kernel through a logon key of
// the thread keyring (which no process can read back), dm-integrity in
// direct mode under dm-crypt with AES-256-GCM and a random IV per 4 KiB
// sector (the tag and IV, 28 bytes, are stored by dm-integrity beside each
// sector), then ext4 without a journal and with project quotas (the
// algorithm's results cap). The key is never written anywhere, so the
// previous boot's contents cannot be read, and a block the host changes
// fails its tag: the read returns EIO, never the changed data.
//
// The kernel's device-mapper interface is used directly (dm.go) rather than
// cryptsetup: no LUKS header is needed for a key that lives one boot, the
// image needs no cryptsetup, libdevmapper, libargon2 or json-c, and the
// layout (4 KiB sectors, no dm-integrity journal, no initial wipe) is the
// one this use needs. The kernel targets are the ones cryptsetup drives for
// `luksFormat --integrity aead --cipher aes-gcm-random`.

// Names and paths of the scratch disk.
const (
	// ScratchParam is the kernel command-line parameter naming the disk:
	//	cvmd.scratch=serial:NAME   the virtio disk whose serial is NAME
	//	cvmd.scratch=vdX           (or /dev/vdX) that virtio disk
	//	cvmd.scratch=none          no disk: keep everything in memory
	// Without it, the virtio disk with serial DefaultScratchSerial is used
	// when there is one (qemu: -device virtio-blk-pci,serial=cvmd-scratch).
	// A named disk is formatted: never name one whose data matters.
	ScratchParam = "cvmd.scratch"
	// DefaultScratchSerial is the serial that marks a scratch disk.
	DefaultScratchSerial = "cvmd-scratch"
	// StateRoot is where the scratch file system is mounted: the
	// supervisor's default --state directory.
	StateRoot = "/var/lib/cvmd"
	// StorageFile is where PID 1 records the storage it set up, for the
	// supervisor proper to measure and size its limits by.
	StorageFile = "/run/cvmd/storage.json"
	// Mke2fs is the image's mke2fs (out of PATH: algorithms see /usr).
	Mke2fs = "/usr/lib/cvmd/mke2fs"
)

// The volume layout.
const (
	scratchName      = "cvmd-scratch"
	scratchIntegrity = "cvmd-scratch-integrity"
	scratchCipher    = "capi:gcm(aes)-random"
	scratchKeyBytes  = 32
	// scratchTagBytes is GCM's 16-byte tag plus the 12-byte random IV.
	scratchTagBytes = 28
	sectorBytes     = 4096
	// scratchJournal is dm-integrity's mode: D writes data and tags in
	// place with no journal. A crash can leave a sector whose tag does
	// not match; the volume never outlives the boot, so nothing is lost
	// that the journal (which doubles every write) would have saved.
	scratchJournal = "D"
)

// Layout is how a volume is stacked on its disk. The VM uses LayoutAEAD;
// the others exist for the benchmark that shows what confidentiality and
// integrity cost (images/cmd/scratchbench).
type Layout int

const (
	// LayoutAEAD is dm-crypt AES-256-GCM over dm-integrity: confidential
	// and authenticated.
	LayoutAEAD Layout = iota
	// LayoutCrypt is dm-crypt AES-256-XTS alone: confidential, but a
	// changed block decrypts to garbage instead of failing.
	LayoutCrypt
	// LayoutPlain is the file system on the disk itself.
	LayoutPlain
)

func (l Layout) String() string {
	switch l {
	case LayoutAEAD:
		return "aead"
	case LayoutCrypt:
		return "crypt"
	case LayoutPlain:
		return "plain"
	}
	return "layout(" + strconv.Itoa(int(l)) + ")"
}

// ScratchChoice is what the command line asks for.
type ScratchChoice struct {
	None   bool   // cvmd.scratch=none
	Serial string // find the disk by its virtio serial
	Disk   string // or by its kernel name (vdb)
}

// ParseScratch parses the value of cvmd.scratch ("" is the default).
func ParseScratch(v string) (ScratchChoice, error) {
	switch {
	case v == "":
		return ScratchChoice{Serial: DefaultScratchSerial}, nil
	case v == "none":
		return ScratchChoice{None: true}, nil
	case strings.HasPrefix(v, "serial:"):
		s := strings.TrimPrefix(v, "serial:")
		if s == "" || len(s) > 20 || strings.ContainsAny(s, " /\x00") {
			return ScratchChoice{}, fmt.Errorf("pid1: %s=%q: a virtio serial is 1 to 20 characters without spaces or slashes", ScratchParam, v)
		}
		return ScratchChoice{Serial: s}, nil
	}
	name := strings.TrimPrefix(v, "/dev/")
	if !validDiskName(name) {
		return ScratchChoice{}, fmt.Errorf("pid1: %s=%q: want serial:NAME, a virtio disk (vdb or /dev/vdb) or none", ScratchParam, v)
	}
	return ScratchChoice{Disk: name}, nil
}

func validDiskName(s string) bool {
	if len(s) < 3 || len(s) > 8 || !strings.HasPrefix(s, "vd") {
		return false
	}
	for _, r := range s[2:] {
		if r < 'a' || r > 'z' {
			return false
		}
	}
	return true
}

// Disk is a virtio block device.
type Disk struct {
	Name         string // "vdb"
	Serial       string
	Bytes        uint64
	Major, Minor uint32
	ReadOnly     bool
}

// Node is how a device-mapper table names the disk.
func (d Disk) Node() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Disks lists the virtio disks under sysBlock (/sys/block).
func Disks(sysBlock string) ([]Disk, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("pid1: listing disks: %w", err)
	}
	var out []Disk
	for _, e := range ents {
		if !validDiskName(e.Name()) {
			continue
		}
		dir := filepath.Join(sysBlock, e.Name())
		read := func(f string) string {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			return strings.TrimSpace(string(b))
		}
		d := Disk{Name: e.Name(), Serial: read("serial"), ReadOnly: read("ro") == "1"}
		sectors, err := strconv.ParseUint(read("size"), 10, 64)
		if err != nil {
			continue
		}
		d.Bytes = sectors * 512
		var maj, min uint32
		if _, err := fmt.Sscanf(read("dev"), "%d:%d", &maj, &min); err != nil {
			continue
		}
		d.Major, d.Minor = maj, min
		out = append(out, d)
	}
	return out, nil
}

// FindDisk returns the disk the choice names, or ok=false when it names
// none that is there.
func FindDisk(c ScratchChoice, disks []Disk) (Disk, bool) {
	for _, d := range disks {
		if (c.Disk != "" && d.Name == c.Disk) || (c.Serial != "" && d.Serial == c.Serial) {
			return d, true
		}
	}
	return Disk{}, false
}

// SetupStorage gives StateRoot its storage and records it in StorageFile:
// the scratch disk the command line names (or the default one) as a fresh
// encrypted, authenticated volume; without one, or when it cannot be set
// up, the root tmpfs as before. It never fails: what it chose, and why, is
// in the result, which the supervisor measures. A second call in the same
// boot (PID 1 starting over) keeps what the first one set up.
func SetupStorage(log *slog.Logger, cmd Cmdline) Storage {
	if rec, err := readStorageRecord(StorageFile); err == nil && rec.matches() {
		log.Info("pid1: storage already set up", "kind", rec.Storage.Kind)
		return rec.Storage
	}
	st := chooseStorage(log, cmd)
	if err := writeStorageRecord(StorageFile, StateRoot, st); err != nil {
		log.Error("pid1: recording the storage", "err", err)
	}
	return st
}

func chooseStorage(log *slog.Logger, cmd Cmdline) Storage {
	memory := func(reason string) Storage {
		st := memoryStorage(StateRoot, reason)
		log.Info("pid1: storage: memory (tmpfs)", "reason", reason, "size_mib", st.SizeBytes>>20)
		return st
	}
	choice, err := ParseScratch(cmd.Get(ScratchParam))
	if err != nil {
		log.Error("pid1: scratch disk", "err", err)
		return memory(err.Error())
	}
	if choice.None {
		return memory(ScratchParam + "=none")
	}
	disks, err := Disks("/sys/block")
	if err != nil {
		return memory(err.Error())
	}
	disk, ok := FindDisk(choice, disks)
	if !ok {
		what := "a virtio disk with serial " + choice.Serial
		if choice.Disk != "" {
			what = "virtio disk " + choice.Disk
		}
		return memory("no scratch disk (" + what + ")")
	}
	if err := LoadScratchModules(log); err != nil {
		log.Warn("pid1: scratch disk modules incomplete", "err", err)
	}
	st, err := FormatVolume(log, disk, StateRoot, LayoutAEAD)
	if err != nil {
		log.Error("pid1: scratch disk unusable; keeping the computation in memory", "disk", disk.Name, "err", err)
		return memory(truncate(fmt.Sprintf("scratch disk %s unusable: %v", disk.Name, err), 300))
	}
	return st
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// memoryStorage describes a directory of the root tmpfs.
func memoryStorage(dir, reason string) Storage {
	os.MkdirAll(dir, 0o755)
	return Storage{Kind: StorageMemory, FS: fsName(dir), SizeBytes: fsSize(dir), Reason: reason}
}

// FormatVolume makes a fresh volume of the given layout on disk and mounts
// it on dir. Everything the disk held is lost. On error nothing stays
// mounted or mapped.
func FormatVolume(log *slog.Logger, disk Disk, dir string, layout Layout) (_ Storage, err error) {
	start := time.Now()
	if disk.ReadOnly {
		return Storage{}, fmt.Errorf("disk %s is read-only", disk.Name)
	}
	if disk.Bytes < 64<<20 {
		return Storage{}, fmt.Errorf("disk %s has %d bytes, want at least 64 MiB", disk.Name, disk.Bytes)
	}
	name := scratchName
	if layout != LayoutAEAD {
		name += "-" + layout.String()
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	st := Storage{Kind: StorageDisk, FS: "ext4", Disk: disk.Name, Serial: disk.Serial, DiskBytes: disk.Bytes, SectorBytes: sectorBytes}
	node := "/dev/" + disk.Name
	if err := mknodBlock(node, disk.Major, disk.Minor); err != nil {
		return st, err
	}
	var top string // the device the file system goes on
	switch layout {
	case LayoutPlain:
		top = node
		st.Kind = "plain-disk"
	case LayoutCrypt:
		key := make([]byte, 64)
		rand.Read(key)
		sectors := disk.Bytes / 512 &^ 7
		d, err := withKey(key, func(keyParam string) (dmDevice, error) {
			return dmCreate(name, unix.DM_SECURE_DATA_FLAG, dmTarget{Length: sectors, Type: "crypt",
				Params: fmt.Sprintf("aes-xts-plain64 %s 0 %s 0 1 sector_size:%d", keyParam, disk.Node(), sectorBytes)})
		})
		if err != nil {
			return st, err
		}
		undo = append(undo, func() { dmRemove(name) })
		st.Kind, st.Cipher, st.KeyBits = "crypt-disk", "aes-xts-plain64", 512
		if top, err = dmNode(d); err != nil {
			return st, err
		}
	case LayoutAEAD:
		integ, sectors, err := makeIntegrity(node, disk, name+"-integrity")
		if err != nil {
			return st, err
		}
		undo = append(undo, func() { dmRemove(integ.Name) })
		log.Info("pid1: scratch: dm-integrity ready", "disk", disk.Name, "data_mib", sectors>>11, "ms", time.Since(start).Milliseconds())
		key := make([]byte, scratchKeyBytes)
		if _, err := rand.Read(key); err != nil {
			return st, fmt.Errorf("making the key: %w", err)
		}
		d, err := withKey(key, func(keyParam string) (dmDevice, error) {
			return dmCreate(name, unix.DM_SECURE_DATA_FLAG, dmTarget{Length: sectors, Type: "crypt",
				Params: fmt.Sprintf("%s %s 0 %s 0 2 integrity:%d:aead sector_size:%d", scratchCipher, keyParam, integ.Node(), scratchTagBytes, sectorBytes)})
		})
		if err != nil {
			return st, err
		}
		undo = append(undo, func() { dmRemove(name) })
		st.Cipher, st.KeyBits, st.Integrity, st.Journal, st.TagBytes = scratchCipher, 8*scratchKeyBytes, "aead", scratchJournal, scratchTagBytes
		if top, err = dmNode(d); err != nil {
			return st, err
		}
		// No sector of the new volume has a valid tag yet: a read before
		// the first write fails. mke2fs reads the first sectors before it
		// writes them; give them (and the last ones) valid tags.
		if err := zeroEnds(top, 1<<20); err != nil {
			return st, err
		}
	}
	t := time.Now()
	if err := mkfs(top); err != nil {
		return st, err
	}
	log.Info("pid1: scratch: file system made", "device", top, "ms", time.Since(t).Milliseconds())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return st, err
	}
	if err := unix.Mount(top, dir, "ext4", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOATIME, "prjquota"); err != nil {
		return st, fmt.Errorf("mounting %s on %s: %w", top, dir, err)
	}
	undo = append(undo, func() { unix.Unmount(dir, unix.MNT_DETACH) })
	os.Chmod(dir, 0o755)
	st.SizeBytes = fsSize(dir)
	log.Info("pid1: storage: scratch disk", "disk", disk.Name, "serial", disk.Serial, "layout", layout.String(), "cipher", st.Cipher,
		"integrity", st.Integrity, "disk_mib", disk.Bytes>>20, "fs_mib", st.SizeBytes>>20, "mount", dir, "ms", time.Since(start).Milliseconds())
	return st, nil
}

// makeIntegrity formats disk for dm-integrity (tags supplied by dm-crypt)
// and maps all the data sectors it provides. dm-integrity formats a device
// whose superblock area is all zeros when a table is first loaded on it;
// its status then tells how many data sectors the layout leaves, and the
// table is reloaded with that length.
func makeIntegrity(node string, disk Disk, name string) (dmDevice, uint64, error) {
	if err := zeroAt(node, 0, 4096); err != nil {
		return dmDevice{}, 0, err
	}
	// journal_sectors: the minimum; mode D never writes the journal.
	params := fmt.Sprintf("%s 0 %d %s 3 block_size:%d fix_padding journal_sectors:%d", disk.Node(), scratchTagBytes, scratchJournal, sectorBytes, 8)
	d, err := dmCreate(name, 0, dmTarget{Length: 8, Type: "integrity", Params: params})
	if err != nil {
		return dmDevice{}, 0, err
	}
	status, err := dmStatus(name, false)
	if err != nil {
		dmRemove(name)
		return dmDevice{}, 0, err
	}
	// "<mismatches> <provided data sectors> <recalculated sector>"
	f := strings.Fields(status)
	var provided uint64
	if len(f) >= 2 {
		provided, err = strconv.ParseUint(f[1], 10, 64)
	}
	if len(f) < 2 || err != nil || provided < 8 {
		dmRemove(name)
		return dmDevice{}, 0, fmt.Errorf("dm-integrity status %q: no data sector count", status)
	}
	provided &^= 7
	if err := dmReload(name, 0, dmTarget{Length: provided, Type: "integrity", Params: params}); err != nil {
		dmRemove(name)
		return dmDevice{}, 0, err
	}
	return d, provided, nil
}

// withKey hands key to the kernel as a logon key in the thread keyring of
// a thread made for this and calls load with the dm-crypt key parameter
// naming it, on the same thread (dm-crypt looks the key up in the caller's
// keyrings while the table loads). The key is then invalidated, the thread
// ends with its keyring, and key is zeroed: the only copy left is dm-crypt's,
// in the kernel.
func withKey(key []byte, load func(keyParam string) (dmDevice, error)) (dmDevice, error) {
	type result struct {
		d   dmDevice
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread exits with this goroutine.
		runtime.LockOSThread()
		defer clear(key)
		tag := make([]byte, 8)
		rand.Read(tag)
		desc := "cvmd:scratch-" + hex.EncodeToString(tag)
		id, err := unix.AddKey("logon", desc, key, unix.KEY_SPEC_THREAD_KEYRING)
		if err != nil {
			done <- result{err: fmt.Errorf("handing the key to the kernel keyring: %w", err)}
			return
		}
		d, err := load(fmt.Sprintf(":%d:logon:%s", len(key), desc))
		unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0)
		done <- result{d, err}
	}()
	r := <-done
	return r.d, r.err
}

// dmNode makes /dev/mapper/NAME for a device-mapper device (there is no
// udev to do it) and returns its path.
func dmNode(d dmDevice) (string, error) {
	p := "/dev/mapper/" + d.Name
	return p, mknodBlock(p, d.Major, d.Minor)
}

// mknodBlock makes (or replaces) a block device node.
func mknodBlock(path string, major, minor uint32) error {
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == unix.Mkdev(major, minor) {
		return nil
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.Remove(path)
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor))); err != nil {
		return fmt.Errorf("making device node %s: %w", path, err)
	}
	return nil
}

func zeroAt(path string, off, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(make([]byte, n), off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("zeroing %s at %d: %w", path, off, err)
	}
	return nil
}

// zeroEnds writes zeros to the first and last n bytes of a block device.
func zeroEnds(path string, n int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	size, err := f.Seek(0, 2)
	f.Close()
	if err != nil {
		return fmt.Errorf("size of %s: %w", path, err)
	}
	if err := zeroAt(path, 0, min(n, size)); err != nil {
		return err
	}
	return zeroAt(path, max(0, size-n), min(n, size))
}

// mkfs makes the ext4 file system: 4 KiB blocks, no journal (the volume
// does not survive a crash anyway, and a journal doubles metadata writes),
// project quotas (the results cap), no reserved blocks, one inode per 64
// KiB, and the inode tables written now rather than by a kernel thread
// while the computation runs.
func mkfs(dev string) error {
	cmd := exec.Command(Mke2fs, "-t", "ext4", "-F", "-q", "-b", "4096", "-m", "0", "-i", "65536",
		"-O", "^has_journal,^resize_inode,sparse_super2,quota,project", "-E", "num_backup_sb=0,lazy_itable_init=0,nodiscard,quotatype=prjquota", "-L", "cvmd-scratch", dev)
	cmd.Env = []string{"PATH=/usr/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mke2fs %s: %v: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func fsSize(dir string) uint64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0
	}
	return st.Blocks * uint64(st.Bsize)
}

func fsName(dir string) string {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return "unknown"
	}
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.RAMFS_MAGIC:
		return "ramfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	}
	return fmt.Sprintf("0x%x", st.Type)
}
