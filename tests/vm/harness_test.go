package vm

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
)

// The test binary is also qemu's guestfwd helper: "vm.test pipe HOST:PORT".
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "pipe" {
		if err := qemu.Pipe(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// repoRoot is the module's root (the tests run in tests/vm).
func repoRoot(t testing.TB) string {
	t.Helper()
	r, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// requireQEMU skips the test only when qemu genuinely cannot run here; it
// first tries to install it (scripts/deps.sh vm is idempotent).
func requireQEMU(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("VM tests boot qemu; skipped with -short")
	}
	if os.Getuid() != 0 {
		t.Skip("VM tests run as root (9p security_model=none, swtpm state)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		cmd := exec.Command(filepath.Join(repoRoot(t), "scripts/deps.sh"), "vm")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("installing qemu with scripts/deps.sh vm: %v\n%s", err, out)
		}
	}
	for _, bin := range []string{"qemu-system-x86_64", "swtpm"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed and scripts/deps.sh vm could not install it: %v", bin, err)
		}
	}
}

var buildMu sync.Mutex

// goBuild builds a package of this module into dir and returns the binary.
func goBuild(t testing.TB, dir, pkg, name string, env []string, args ...string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", append(append([]string{"build", "-o", out}, args...), pkg)...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// cvmdBinary returns bin/cvmd from CVMD_BIN, or builds it statically.
func cvmdBinary(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("CVMD_BIN"); d != "" {
		if p := filepath.Join(d, "cvmd"); fileExists(p) {
			return p
		}
	}
	return goBuild(t, t.TempDir(), "./cmd/cvmd", "cvmd", []string{"CGO_ENABLED=1"},
		"-tags", "seccomp netgo osusergo grpcnotrace", "-trimpath", "-ldflags", `-linkmode external -extldflags "-static"`)
}

// cvmBinary returns bin/cvm from CVMD_BIN, or builds it.
func cvmBinary(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("CVMD_BIN"); d != "" {
		if p := filepath.Join(d, "cvm"); fileExists(p) {
			return p
		}
	}
	return goBuild(t, t.TempDir(), "./cmd/cvm", "cvm", nil, "-trimpath")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// image is one built image.
type image struct {
	Kernel, Initrd string
	Build          time.Duration
}

// buildImage runs images/build.sh with init as /init and extra copied over
// the root, into images/out under name. Builds are serialized: they share
// the download cache.
func buildImage(t testing.TB, name, init, extra string, env ...string) image {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	root := repoRoot(t)
	cmd := exec.Command(filepath.Join(root, "images/build.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), append([]string{"INIT=" + init, "NAME=" + name, "EXTRA=" + extra, "OUT=images/out"}, env...)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("images/build.sh (%s): %v\n%s", name, err, out)
	}
	t.Logf("image %s built in %v:\n%s", name, time.Since(start).Round(time.Millisecond), out)
	return image{
		Kernel: filepath.Join(root, "images/out/vmlinuz"),
		Initrd: filepath.Join(root, "images/out", name+".cpio.zst"),
		Build:  time.Since(start),
	}
}

// guest is a booted VM under test.
type guest struct {
	t     testing.TB
	vm    *qemu.VM
	debug bool // the image serves the debug port
}

// boot starts the VM and arranges for it to be killed at the end of the test.
func boot(t testing.TB, cfg qemu.Config) *guest {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.ManagerAddr != "" {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cfg.PipeCommand = []string{self, "pipe"}
	}
	var stderr strings.Builder
	cfg.Stderr = &syncWriter{w: &stderr}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := qemu.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	g := &guest{t: t, vm: vm, debug: cfg.DebugPort}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			// Keep the serial log past the temporary directory's removal.
			keep := filepath.Join(repoRoot(t), "images/out/logs", strings.ReplaceAll(t.Name(), "/", "_")+".serial.log")
			os.MkdirAll(filepath.Dir(keep), 0o755)
			if b, err := os.ReadFile(vm.SerialLog()); err == nil {
				os.WriteFile(keep, b, 0o644)
			}
			t.Logf("serial log kept in %s; qemu stderr:\n%s", keep, stderr.String())
		}
	})
	return g
}

type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// wait waits for a serial line matching re; on failure it fails the test
// with the serial lines that explain it.
func (g *guest) wait(step string, from int, re string, timeout time.Duration) (int, qemu.Line) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	i, l, err := g.vm.WaitLine(ctx, from, regexp.MustCompile(re))
	if err != nil {
		g.fatalf(step, "%v", err)
	}
	return i, l
}

// fatalf fails the test at a step, printing the last serial lines (and,
// in test images, the guest's processes with what they wait in).
func (g *guest) fatalf(step, format string, args ...any) {
	g.t.Helper()
	g.t.Fatalf("step %q: %s\nlast serial lines:\n%s%s", step, fmt.Sprintf(format, args...), g.vm.Tail(60), g.processes())
}

// processes is, in test images, the guest's processes with what they wait
// in and their kernel stacks ("" without a debug port).
func (g *guest) processes() string {
	if !g.debug {
		return ""
	}
	var b strings.Builder
	for _, q := range []struct{ cmd, title string }{
		{"ps", "guest processes (pid:name:state:wchan)"},
		{"stacks", "kernel stacks (pid:name:functions)"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := g.vm.Debug(ctx, q.cmd)
		cancel()
		if err != nil {
			fmt.Fprintf(&b, "\n%s: %v", q.title, err)
			continue
		}
		fmt.Fprintf(&b, "\n%s:\n  %s", q.title, strings.ReplaceAll(out, " ", "\n  "))
	}
	return b.String()
}

// goroutines makes the guest's supervisor proper print its goroutines on
// the console (it exits; PID 1 starts another) and returns those lines.
// Test images only.
func (g *guest) goroutines() string {
	if !g.debug {
		return ""
	}
	from := len(g.vm.Lines())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := g.vm.Debug(ctx, "goroutines"); err != nil || strings.HasPrefix(out, "error") {
		return fmt.Sprintf("goroutines: %q, %v", out, err)
	}
	end, _, err := g.vm.WaitLine(ctx, from, regexp.MustCompile(`msg="supervisor proper exited"`))
	ls := g.vm.Lines()[from:]
	if err == nil {
		ls = ls[:end-from]
	}
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	return b.String()
}

// powerOff presses the power button and expects qemu to exit 0 in time.
func (g *guest) powerOff(timeout time.Duration) time.Duration {
	g.t.Helper()
	start := time.Now()
	if err := g.vm.Powerdown(); err != nil {
		g.fatalf("power off", "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := g.vm.Wait(ctx); err != nil {
		g.fatalf("power off", "qemu did not exit cleanly: %v", err)
	}
	if s := g.vm.Grep(regexp.MustCompile(`Kernel panic|end Kernel panic`)); s != "" {
		g.fatalf("power off", "the kernel panicked:\n%s", s)
	}
	return time.Since(start)
}

// dialLine connects to addr, sends one line and returns the answer line.
func dialLine(addr, line string, timeout time.Duration) (string, error) {
	var lastErr error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c, err := netDial(addr)
		if err != nil {
			lastErr = err
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(c, line)
		s, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return strings.TrimSpace(s), nil
	}
	return "", lastErr
}
