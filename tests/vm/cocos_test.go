package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
	"github.com/cvmd/cvmd/proto/cvms"
)

// cocosEnvironment is the environment file Cocos's manager writes into
// env_share for a VM: its CVMS address, the VM's id, the log level, and
// the two variables for certificates from a CA, empty when there is none.
func cocosEnvironment(managerURL, cvmID string) string {
	return fmt.Sprintf("AGENT_CVM_GRPC_URL=%s\nAGENT_CVM_ID=%s\nAGENT_LOG_LEVEL=info\nAGENT_CERTS_TOKEN=\nAGENT_CVM_CA_URL=\n", managerURL, cvmID)
}

// cocosVM is one boot of the production image as Cocos's manager boots it.
type cocosVM struct {
	*e2e
	withTPM bool
}

// bootCocos builds nothing: it boots img with qemu.MachineCocos (OVMF,
// q35, EPYC, 4 of 64 vCPUs, memory hot-plug slots, the open hostfwd,
// mapped 9p shares, "quiet console=null") in a network namespace of its
// own, with the manager listening on that namespace's loopback, which the
// guest reaches at qemu.CocosHostAddr as Cocos's VMs reach their host.
// cmdline replaces the manager's kernel command line when set.
func bootCocos(t *testing.T, img image, cvmd string, withTPM bool, cmdline string) *cocosVM {
	requireOVMF(t)
	c := &cocosVM{e2e: newE2E(t), withTPM: withTPM}
	ns, err := qemu.NewNetNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	c.netns = ns
	ln, url := managerListener(t, ns)
	c.serveManager(ln, c.computation("1"))

	envDir, certsDir, vmDir := filepath.Join(c.dir, "env"), filepath.Join(c.dir, "certs"), filepath.Join(c.dir, "vm")
	for _, d := range []string{envDir, certsDir, vmDir} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(envDir, "environment"), []byte(cocosEnvironment(url, "b1d2c3e4-cocos-vm")), 0o644)
	if withTPM {
		c.akHash = provisionAK(t, filepath.Join(vmDir, "tpm"))
		c.table = childTableHash(t, cvmd)
	}
	c.g = boot(t, qemu.Config{
		Machine: qemu.MachineCocos, NetNS: ns, Kernel: img.Kernel, Initrd: img.Initrd,
		TPM: withTPM, EnvDir: envDir, CertsDir: certsDir, Dir: vmDir,
		Cocos: qemu.CocosOptions{Cmdline: cmdline},
	})
	return c
}

// requireOVMF installs Debian's ovmf if the firmware is missing.
func requireOVMF(t testing.TB) {
	t.Helper()
	const code = "/usr/share/OVMF/OVMF_CODE.fd"
	if fileExists(code) {
		return
	}
	cmd := exec.Command(filepath.Join(repoRoot(t), "scripts/deps.sh"), "vm")
	if out, err := cmd.CombinedOutput(); err != nil || !fileExists(code) {
		t.Fatalf("installing OVMF with scripts/deps.sh vm: %v\n%s", err, out)
	}
}

// waitAllReady waits until the manager has heard child.ready of every boot
// child (the console is null: the manager's log stream is the only view
// into the guest) and returns the host time it heard the last one, since
// qemu started.
func (c *cocosVM) waitAllReady(step string, timeout time.Duration) time.Duration {
	c.t.Helper()
	var last time.Time
	for _, name := range children {
		m := c.waitManager(step, timeout, supervisorEvent("child.ready", `"child":"`+name+`"`))
		for _, r := range c.mgr.Messages() {
			if r.Msg == m && r.At.After(last) {
				last = r.At
			}
		}
	}
	return last.Sub(c.g.vm.Started())
}

// TestCocosManagerVM boots the production image with the command line of
// Cocos's manager, with a vTPM and without, and in each runs a
// computation to its result: with the vTPM, attestation verifies; without
// it, attestation is refused naming what is missing, and the manager hears
// the VM has no platform. The manager stops each VM as Cocos's does, with
// SIGTERM to qemu.
func TestCocosManagerVM(t *testing.T) {
	if os.Getenv("CVMD_BENCH_VM") == "1" {
		t.Skip("make bench-vm boots Cocos's VM inside TestBenchVM")
	}
	requireQEMU(t)
	cvmd := cvmdBinary(t)
	img := buildImage(t, "vmtest-cocos", cvmd, "")
	for _, withTPM := range []bool{true, false} {
		name := map[bool]string{true: "with a vTPM", false: "without a vTPM"}[withTPM]
		t.Run(name, func(t *testing.T) {
			c := bootCocos(t, img, cvmd, withTPM, "")
			ready := c.waitAllReady("boot: every child ready", 5*time.Minute)
			if r := c.waitManager("computation 1 answered", 3*time.Minute, runResOf("1")).GetRunRes(); r.GetError() != "" {
				c.g.fatalf("computation 1 answered", "run_res error %q", r.GetError())
			}
			t.Logf("qemu start → every child ready (seen by the manager): %.1f s", ready.Seconds())
			if withTPM {
				c.attest("attestation")
			} else {
				c.refusedAttestation()
			}
			c.runComputation("1", "sum 108\n")
			c.terminate()
		})
	}
}

// refusedAttestation checks a VM without a platform: the manager heard it
// (the attestation child's event) and `cvm attestation get` is refused
// with what is missing.
func (c *cocosVM) refusedAttestation() {
	c.t.Helper()
	missing := "no TPM at /dev/tpmrm0, no SEV-SNP report interface (configfs-tsm or /dev/sev-guest), no TDX report interface (configfs-tsm or /dev/tdx_guest)"
	c.waitManager("no platform reported", time.Minute, func(m *cvms.ClientStreamMessage) bool {
		ev := m.GetAgentEvent()
		return ev != nil && ev.GetEventType() == "attestation.no_platform" && strings.Contains(string(ev.GetDetails()), "no TPM at /dev/tpmrm0")
	})
	for _, kind := range []string{"vtpm", "snp-vtpm"} {
		out, err := c.cvmRun("attestation refused", 2*time.Minute, "attestation", "get", kind,
			"--tee", strings.Repeat("cd", 64), "--vtpm", strings.Repeat("ab", 32), "-o", filepath.Join(c.dir, "att.bin"))
		if err == nil || !strings.Contains(out, "attestation: no platform: "+missing) {
			c.g.fatalf("attestation refused", "cvm attestation get %s on a VM without a vTPM: %v\n%s", kind, err, out)
		}
	}
}

// terminate stops the VM as Cocos's manager does: SIGTERM to qemu, which
// exits at once without telling the guest.
func (c *cocosVM) terminate() time.Duration {
	c.t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.g.vm.Terminate(ctx); err != nil && !strings.Contains(err.Error(), "signal: terminated") {
		c.g.fatalf("SIGTERM", "qemu: %v", err)
	}
	return time.Since(start)
}
