package vm

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
	"github.com/cvmd/cvmd/supervisor/pid1"
)

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

// probeInputs builds images/cmd/bootprobe (the /init of the probe image)
// and a tree to copy over the image: a dynamically linked C program at
// /usr/bin/hello-dyn (proof that the base has a working libc for `bin`
// algorithms) and the debug-port marker.
func probeInputs(t testing.TB) (probe, extra string) {
	t.Helper()
	dir := t.TempDir()
	probe = goBuild(t, dir, "./images/cmd/bootprobe", "bootprobe", []string{"CGO_ENABLED=0"}, "-trimpath")
	extra = filepath.Join(dir, "extra")
	os.MkdirAll(filepath.Join(extra, "usr/bin"), 0o755)
	os.MkdirAll(filepath.Join(extra, "etc/cvmd"), 0o755)
	os.WriteFile(filepath.Join(extra, "etc/cvmd/debug-port"), nil, 0o644)
	src := filepath.Join(dir, "hello.c")
	os.WriteFile(src, []byte("#include <stdio.h>\nint main(void){puts(\"hello from libc\");return 0;}\n"), 0o644)
	if out, err := exec.Command("gcc", "-O2", "-o", filepath.Join(extra, "usr/bin/hello-dyn"), src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return probe, extra
}

// probeImage builds the image with the probe as /init.
func probeImage(t testing.TB, name, probe, extra string) image {
	t.Helper()
	return buildImage(t, name, probe, extra, "SOURCE_DATE_EPOCH=1700000000", "IMAGE_VERSION=test")
}

// TestImageBoots boots the image with the probe as /init and checks what the
// image gives cvmd's PID 1: modules, 9p shares, eth0, the vTPM, cgroup2, a
// libc, hostfwd to :7002, guestfwd to the manager, and ACPI power-off.
func TestImageBoots(t *testing.T) {
	requireQEMU(t)
	probe, extra := probeInputs(t)
	img := probeImage(t, "vmtest-probe", probe, extra)

	envDir, certsDir := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(envDir, "environment"), []byte("AGENT_LOG_LEVEL=debug\nAGENT_CVM_GRPC_URL="+qemu.GuestManagerAddr+"\n"), 0o644)
	os.WriteFile(filepath.Join(certsDir, "ca.pem"), []byte("not a real CA\n"), 0o644)

	// The "manager": whatever the guest sends through guestfwd arrives here.
	mgr, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	got := make(chan string, 1)
	go func() {
		c, err := mgr.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		s, _ := bufio.NewReader(c).ReadString('\n')
		got <- s
	}()

	g := boot(t, qemu.Config{
		Kernel: img.Kernel, Initrd: img.Initrd, TPM: true, EnvDir: envDir, CertsDir: certsDir,
		ManagerAddr: mgr.Addr().String(), Append: "cvmd.probe.manager=" + qemu.GuestManagerAddr,
		DebugPort: true,
	})
	ready, _ := g.wait("boot to ready", 0, `^bootprobe: ready$`, 3*time.Minute)

	checks := []struct{ name, want string }{
		{"load-modules", ""},
		{"prepare", ""},
		{"eth0", "10.0.2.15/24"},
		{"env_share", "AGENT_CVM_GRPC_URL=10.0.2.100:7001"},
		{"certs_share", ""},
		{"tpm", "/dev/tpmrm0"},
		{"modules", "virtio_net"},
		{"modules", "9p"},
		{"modules", "overlay"},
		{"modules", "vsock"},
		{"cgroup2", ""},
		{"libc", "hello from libc"},
		{"ca-certificates", ""},
		{"listen-7002", ""},
		{"manager-dial", qemu.GuestManagerAddr},
	}
	for _, c := range checks {
		t.Run(strings.TrimSpace(c.name+" "+c.want), func(t *testing.T) {
			re := regexp.MustCompile(`^bootprobe: check ` + regexp.QuoteMeta(c.name) + ` (ok|fail)(.*)$`)
			var line string
			for _, l := range g.vm.Lines()[:ready] {
				if re.MatchString(l.Text) {
					line = l.Text
				}
			}
			if line == "" || !strings.Contains(line, " ok") || !strings.Contains(line, c.want) {
				t.Errorf("check %s: got %q, want ok with %q\nserial:\n%s", c.name, line, c.want, g.vm.Tail(40))
			}
		})
	}

	t.Run("hostfwd", func(t *testing.T) {
		ans, err := dialLine(g.vm.HostAddr(), "ping", 30*time.Second)
		if err != nil || ans != "echo: ping" {
			t.Errorf("127.0.0.1 → guest :7002: got %q, %v; want \"echo: ping\"", ans, err)
		}
	})
	t.Run("guestfwd", func(t *testing.T) {
		select {
		case s := <-got:
			if s != "hello manager from the guest\n" {
				t.Errorf("manager got %q", s)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the manager heard nothing from the guest")
		}
	})

	t.Run("debug port", func(t *testing.T) {
		for cmd, want := range map[string]string{"ping": "pong", "kill nosuch": "error: no running child nosuch"} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			got, err := g.vm.Debug(ctx, cmd)
			cancel()
			if err != nil || got != want {
				t.Errorf("debug %q = %q, %v; want %q", cmd, got, err, want)
			}
		}
	})

	took := g.powerOff(time.Minute)
	g.wait("orderly power-off", ready, `^bootprobe: got power failure, powering off$`, time.Second)
	t.Logf("power button → qemu exit: %v", took.Round(time.Millisecond))
}

// TestImageIsReproducible builds the probe image twice and compares bytes.
func TestImageIsReproducible(t *testing.T) {
	requireQEMU(t) // for the build tools, which deps.sh vm installs
	probe, extra := probeInputs(t)
	a := probeImage(t, "vmtest-repro-a", probe, extra)
	// Different file times in the inputs must not matter.
	os.Chtimes(probe, time.Now(), time.Now().Add(-time.Hour))
	b := probeImage(t, "vmtest-repro-b", probe, extra)
	ab, err1 := os.ReadFile(a.Initrd)
	bb, err2 := os.ReadFile(b.Initrd)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !bytes.Equal(ab, bb) {
		t.Fatalf("two builds of the same image differ: %s and %s", a.Initrd, b.Initrd)
	}
	for _, n := range []string{"vmtest-repro-a", "vmtest-repro-b"} {
		os.RemoveAll(filepath.Join(repoRoot(t), "images/out", "root-"+n))
	}
	os.Remove(a.Initrd)
	os.Remove(b.Initrd)
}

// TestProductionImageHasNoDebugPort makes sure the image make image builds
// (no EXTRA tree) does not carry the test images' debug-port marker, and
// that the kernel modules guestboot loads are all in it.
func TestProductionImageHasNoDebugPort(t *testing.T) {
	requireQEMU(t) // for the build tools, which deps.sh vm installs
	buildImage(t, "vmtest-prod", cvmdBinary(t), "")
	root := filepath.Join(repoRoot(t), "images/out/root-vmtest-prod")
	if _, err := os.Stat(filepath.Join(root, "etc/cvmd/debug-port")); err == nil {
		t.Fatalf("the production image has the debug-port marker")
	}
	list, err := filepath.Glob(filepath.Join(root, "usr/lib/modules/*/modules.cvmd"))
	if err != nil || len(list) != 1 {
		t.Fatalf("module list: %v %v", list, err)
	}
	f, err := os.Open(list[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mods, err := pid1.ParseModuleList(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if _, err := os.Stat(filepath.Join(filepath.Dir(list[0]), m.Path)); err != nil {
			t.Errorf("module %s listed but missing: %v", m.Path, err)
		}
	}
	if len(mods) < 20 {
		t.Errorf("only %d modules listed", len(mods))
	}
	os.RemoveAll(root)
	os.Remove(filepath.Join(repoRoot(t), "images/out/vmtest-prod.cpio.zst"))
}
