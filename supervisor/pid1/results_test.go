package pid1

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestResultsAreaCapsFiles: a results directory on an ext4 file system with
// project quotas (a loop device here, the scratch disk in the VM) refuses
// files past its file cap, even empty ones that take no blocks, to the
// algorithm's user.
func TestResultsAreaCapsFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop device, mount, quotas)")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("no losetup")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mke2fs", "-t", "ext4", "-F", "-q", "-b", "4096", "-N", "8192", "-O", "^has_journal,quota,project",
		"-E", "quotatype=prjquota", img).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	out, err := exec.Command(losetup, "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", loop).Run() })
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount(loop, mnt, "ext4", unix.MS_NODEV|unix.MS_NOSUID, "prjquota"); err != nil {
		// This machine's kernel has no CONFIG_QUOTA (EINVAL); the VM's has.
		t.Skipf("mounting %s with prjquota: %v (does the kernel have CONFIG_QUOTA?)", loop, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	area, err := NewResultsArea(filepath.Join(mnt, "results"))
	if err != nil {
		t.Fatal(err)
	}
	const uid, files = 65534, 100
	os.Chmod(filepath.Join(mnt, "results"), 0o755)
	res, remove, err := area.Make("algo-1", 1, 1<<20, files, uid, uid)
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	// As the algorithm's user: root is exempt from quotas.
	sh := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 1000 ]; do : > f$i || exit 7; i=$((i+1)); done`)
	sh.Dir = res
	sh.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err = sh.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || !strings.Contains(string(out), "quota") {
		t.Fatalf("1000 empty files under a cap of %d: %v: %s", files, err, out)
	}
	ents, _ := os.ReadDir(res)
	if len(ents) > files {
		t.Fatalf("%d files made under a cap of %d", len(ents), files)
	}
	t.Logf("%d files made, then: %s", len(ents), strings.TrimSpace(string(out)))
}
