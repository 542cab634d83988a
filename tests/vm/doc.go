// Package vm holds the end-to-end tests that boot the cvmd image under qemu:
// the image's own boot test (a probe as /init: modules, 9p shares, eth0,
// vTPM, libc, hostfwd, guestfwd, ACPI power-off) and the full system test
// (cvmd as PID 1, the development manager, the cvm CLI through the
// forwarded port), plus the VM benchmarks run by make bench-vm. Nothing
// imports it.
package vm
