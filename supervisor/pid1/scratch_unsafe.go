package pid1

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// dmIoctl passes a dm_ioctl buffer to the kernel, which writes its answer
// into the same buffer.
func dmIoctl(fd uintptr, cmd uintptr, buf []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, cmd, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// fsxattr is struct fsxattr (linux/fs.h), the argument of
// FS_IOC_FSGETXATTR and FS_IOC_FSSETXATTR.
type fsxattr struct {
	Xflags     uint32
	Extsize    uint32
	Nextents   uint32
	Projid     uint32
	Cowextsize uint32
	_          [8]byte
}

func fsxattrIoctl(fd uintptr, cmd uintptr, x *fsxattr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, cmd, uintptr(unsafe.Pointer(x)))
	if errno != 0 {
		return errno
	}
	return nil
}

// ifDqblk is struct if_dqblk (linux/quota.h), the argument of Q_SETQUOTA
// and Q_GETQUOTA. Block limits are in 1 KiB units, space in bytes.
type ifDqblk struct {
	BHardLimit uint64
	BSoftLimit uint64
	CurSpace   uint64
	IHardLimit uint64
	ISoftLimit uint64
	CurInodes  uint64
	BTime      uint64
	ITime      uint64
	Valid      uint32
	_          uint32
}

// quotactlFD is quotactl_fd(2): a quota command on the file system of fd.
func quotactlFD(fd uintptr, cmd uint32, id uint32, q *ifDqblk) error {
	_, _, errno := unix.Syscall6(unix.SYS_QUOTACTL_FD, fd, uintptr(cmd), uintptr(id), uintptr(unsafe.Pointer(q)), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
