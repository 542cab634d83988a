package vm

import (
	"strings"
	"testing"
)

func TestVCPUSummary(t *testing.T) {
	regs := "CPU#0\nRAX=0000000000000000 RBX=ffffffff82a0a940\nRIP=ffffffff81e8e2ab RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n" +
		"CPU#1\nRIP=00007f0012345678 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\n"
	got := vcpuSummary(regs)
	for _, want := range []string{
		"cpu 0 rip ffffffff81e8e2ab cpl 0 hlt 1",
		"cpu 1 rip 00007f0012345678 cpl 3 hlt 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
}
