package pid1

import (
	"fmt"
	"os"
	"path/filepath"
)

// warmCgroup is a cgroup PID 1 makes at boot and keeps, empty, so that the
// kernel's cgroup static keys are switched on while nothing else runs.
const warmCgroup = "/sys/fs/cgroup/cvmd-warm"

// warmCgroupKeys makes warmCgroup with a memory controller and a CPU
// quota. The first memory cgroup turns on the kernel's memcg_kmem static
// key (every slab allocation's accounting branch) and the first CPU quota
// its CFS bandwidth key; a static key is switched by patching kernel text
// with int3 breakpoints while other CPUs may run it. Under TCG that
// patching, done by the first sandbox's cgroup while the other sandboxes
// start, livelocked the guest: both vCPUs trapping at the slab path's
// patched branch, RCU stalls and soft lockups, nothing answering for
// minutes (make soak-vm, about 1 boot in 12 on a loaded host). Done here,
// before the supervisor starts, it happens once with only PID 1 running,
// and the keys stay on (the bandwidth key while a quota exists: this
// cgroup keeps one).
func warmCgroupKeys() error {
	if err := os.Mkdir(warmCgroup, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("making %s: %w", warmCgroup, err)
	}
	// A quota no process uses: the cgroup stays empty.
	if err := os.WriteFile(filepath.Join(warmCgroup, "cpu.max"), []byte("100000 100000"), 0); err != nil {
		return fmt.Errorf("setting %s's CPU quota: %w", warmCgroup, err)
	}
	return nil
}
