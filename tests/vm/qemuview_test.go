package vm

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
)

// qemuView is qemu's and the host's view of a guest that answers nothing
// on its ports (the debug port included): qemu's run state, each vCPU's
// instruction pointer, privilege level and halt state in three samples a
// second apart (the soak boots with nokaslr, so that they resolve against
// the System.map of Debian's linux-image-*-dbg package: the image's own is
// a stub), and the host threads of qemu and swtpm with their wait
// channels. A vCPU whose RIP moves in the kernel is busy there; one halted
// with CPL 0 is idle; qemu not answering QMP is stuck itself.
func qemuView(vm *qemu.VM) string {
	var b strings.Builder
	st, err := vm.HMP("info status")
	fmt.Fprintf(&b, "info status: %s%v\n", st, orNil(err))
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		regs, err := vm.HMP("info registers -a")
		if err != nil {
			fmt.Fprintf(&b, "info registers: %v\n", err)
			break
		}
		fmt.Fprintf(&b, "sample %d:\n%s", i+1, vcpuSummary(regs))
	}
	fmt.Fprintf(&b, "host threads (process tid name state wchan):\n%s", vm.HostThreads())
	return b.String()
}

func orNil(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

var (
	cpuHeader = regexp.MustCompile(`^CPU#(\d+)`)
	ripField  = regexp.MustCompile(`RIP=([0-9a-f]+)`)
	cplField  = regexp.MustCompile(`CPL=(\d)`)
	hltField  = regexp.MustCompile(`HLT=(\d)`)
)

// vcpuSummary reduces "info registers -a" to one line per vCPU.
func vcpuSummary(regs string) string {
	var b strings.Builder
	cpu := "?"
	for _, l := range strings.Split(regs, "\n") {
		l = strings.TrimSpace(l)
		if m := cpuHeader.FindStringSubmatch(l); m != nil {
			cpu = m[1]
		}
		m := ripField.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		cpl, hlt := "?", "?"
		if c := cplField.FindStringSubmatch(l); c != nil {
			cpl = c[1]
		}
		if h := hltField.FindStringSubmatch(l); h != nil {
			hlt = h[1]
		}
		fmt.Fprintf(&b, "  cpu %s rip %s cpl %s hlt %s\n", cpu, m[1], cpl, hlt)
	}
	return b.String()
}
