package vm

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cvmd/cvmd/images/qemu"
)

// qemuView is qemu's and the host's view of a guest that answers nothing
// on its ports (the debug port included): qemu's run state, each vCPU's
// instruction pointer, privilege level and halt state in three samples a
// second apart, resolved to the kernel's symbols (the soak boots with
// nokaslr; symbols from the image's System.map, "" for none), and the host
// threads of qemu and swtpm with their wait channels. A vCPU whose RIP
// moves in the kernel is busy there; one halted with CPL 0 is idle; qemu
// not answering QMP is stuck itself.
func qemuView(vm *qemu.VM, symbols *kernelSymbols) string {
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
		fmt.Fprintf(&b, "sample %d:\n%s", i+1, vcpuSummary(regs, symbols))
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
func vcpuSummary(regs string, symbols *kernelSymbols) string {
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
		rip, _ := strconv.ParseUint(m[1], 16, 64)
		fmt.Fprintf(&b, "  cpu %s rip %s %s cpl %s hlt %s\n", cpu, m[1], symbols.lookup(rip), cpl, hlt)
	}
	return b.String()
}

// kernelSymbols are the text symbols of the image's kernel, sorted.
type kernelSymbols struct {
	addrs []uint64
	names []string
}

// loadKernelSymbols reads the System.map of the kernel images/build.sh
// extracted; nil if there is none.
func loadKernelSymbols(root string) *kernelSymbols {
	maps, _ := filepath.Glob(filepath.Join(root, "images/out/kernel-*/boot/System.map-*"))
	if len(maps) == 0 {
		return nil
	}
	f, err := os.Open(maps[len(maps)-1])
	if err != nil {
		return nil
	}
	defer f.Close()
	type sym struct {
		addr uint64
		name string
	}
	var syms []sym
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 || (fs[1] != "t" && fs[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(fs[0], 16, 64)
		if err == nil {
			syms = append(syms, sym{a, fs[2]})
		}
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	k := &kernelSymbols{}
	for _, s := range syms {
		k.addrs = append(k.addrs, s.addr)
		k.names = append(k.names, s.name)
	}
	return k
}

// lookup names addr as symbol+offset, or "" outside the kernel's text.
func (k *kernelSymbols) lookup(addr uint64) string {
	if k == nil || len(k.addrs) == 0 || addr < k.addrs[0] {
		return ""
	}
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr }) - 1
	if i == len(k.addrs)-1 && addr-k.addrs[i] > 1<<20 {
		return ""
	}
	return fmt.Sprintf("(%s+%#x)", k.names[i], addr-k.addrs[i])
}
