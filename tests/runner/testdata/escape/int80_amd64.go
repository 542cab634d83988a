package main

// int80 makes a 32-bit (i386) system call through int $0x80, which a
// 64-bit process may do when the kernel has IA-32 emulation.
func int80(trap, a1, a2, a3 uintptr) uintptr
