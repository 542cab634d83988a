// Package sandbox turns a declarative Spec into a running libcontainer
// (runc v1.5.3) container: namespaces, a rootfs view made of read-only and
// writable binds and tmpfs mounts, capabilities, a seccomp profile and cgroup
// limits (cgroup v1 and v2).
//
// It has two steps, kept apart on purpose (style 8): Spec.Config is a pure
// function from a Spec to a libcontainer configs.Config (testable without
// root, and hashable through Spec.Canonical), and Runtime.Start creates and
// runs the container. Every Sandbox is destroyed with its cgroup when it ends;
// a Runtime removes the stale containers and cgroups of a crashed predecessor
// when it is made and everything it made when it is closed.
//
// Usage:
//
//	rt, err := sandbox.NewRuntime(sandbox.RuntimeConfig{StateDir: "/run/cvmd/containers", CgroupRoot: "cvmd"})
//	sb, err := rt.Start(&sandbox.Spec{ID: "agent", Args: []string{"/proc/self/exe", "agent"}, ...},
//		sandbox.IO{Stderr: w, ExtraFiles: []*os.File{ctl}})
//	state, err := sb.Wait()
//	sb.Destroy()
//
// The binary that uses this package must handle libcontainer's re-exec
// (`<exe> init`) and link the nsenter package (cmd/cvmd does both). Importing
// sandbox/initfirst for its side effect is the cheap way: it runs the re-exec
// from a package initialiser, before most of the binary's other initialisers
// (calling Init from main's func init() also works, but only after every
// package of the binary was initialised, on every spawn).
//
// sandbox does not decide policy: what a child may do is the supervisor's
// child table (or the runner's validated request); it does not log. Only the
// supervisor imports it: children never do.
package sandbox
