package pid1

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfoPid reads si_pid from a siginfo filled by waitid (x86_64/arm64 layout:
// after signo, errno, code (3×int32) and padding, pid is at offset 16).
func siginfoPid(info *unix.Siginfo) int {
	b := (*[128]byte)(unsafe.Pointer(info))
	return int(*(*int32)(unsafe.Pointer(&b[16])))
}
