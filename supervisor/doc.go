// Package supervisor is cvmd's PID 1: it starts every child of the child
// table in its own libcontainer sandbox, wires the children together with
// socketpairs (no socket files), waits for each to say READY before
// starting its dependents, restarts children that exit (rewiring their
// peers instead of restarting them), and shuts everything down in order.
//
// # Processes
//
// `cvmd supervise` (or cvmd as PID 1 with no argument) is three roles:
//
//   - dev launcher (--dev on a workstation): re-executes itself as PID 1 of
//     new PID and mount namespaces and waits, passing on SIGTERM/SIGINT/SIGPWR;
//   - PID 1 (pid1.go): mounts (/proc, /sys, /dev, /run, /tmp, cgroup2),
//     moves an initramfs root into a tmpfs, sets the hostname, reaps orphans
//     (WNOWAIT peek, so it never steals the exit status it waits for through
//     os.Process), turns SIGTERM/SIGINT/SIGPWR into one orderly shutdown, and
//     runs the supervisor proper as its only managed child, restarting it if
//     it dies: a panic in the supervisor logic never reaches PID 1;
//   - supervisor proper (--proper, Supervisor.Run): owns the sandboxes,
//     every fd, the restart policy and the manager link.
//
// # Child table
//
// DefaultTable (table.go) is the declared policy: per child its
// dependencies, network (empty namespace, or the VM's for egress), state
// directories (bound at /state/<dir>, read-only or writable), devices,
// capabilities (none), seccomp profile (sandbox.FDOnlyProfile: socket(2)
// denied, socketpair(2) allowed; egress gets sandbox.NetworkProfile),
// cgroup limits, host files bound read-only (egress: /etc/resolv.conf,
// /etc/hosts), extra fds ("listen" for ingress) and scope (always or
// per-computation). Edges are (client, server) pairs; the client's fd is
// "to:<server>", the server's "from:<client>"; the supervisor is client
// "supervisor". `cvmd supervise --print-sandbox` prints the table and its
// SHA-256 (Table.Canonical / Table.Hash); testdata/table.golden pins it.
//
// # Child contract
//
// Each child gets fd 3 (control channel, SOCK_SEQPACKET) and its edge ends
// and extra fds as fds 4, 5, ... in name order; the first control message
// is control.Hello with a ChildConfig naming every fd and carrying the
// child's typed settings (settings.go). A child answers Ready (or
// StartFailed, logged in its own words); garbage on the channel, or no
// Ready within Table.ReadyTimeout, counts as a failure (the child is
// killed and the restart policy applies; the supervisor never crashes).
// When a child restarts, each running peer receives control.Rewire with a
// fresh end for that edge; the supervisor's own dialers are replaced. For
// the children it dials itself (agent, logfwd) the supervisor then makes one
// gRPC call over the new edge and records in children.json ("serving")
// that the new generation answered.
//
// # Restart policy
//
// The first restart is at once, then Policy.Base·2^n up to Policy.Cap with
// jitter; more than Policy.MaxRestarts restarts within Policy.Window mark
// the child failed (logged, reported as a "child.failed" event) while the
// others keep running. Shutdown stops children by dependency level: every
// running child that no running child depends on, together (ingress first,
// logfwd last), each with Table.StopGrace, then SIGKILL. Counters restart with each computation
// (StartComputation), which also gives failed children another chance and
// restarts per-computation children (runner, and ingress with the TLS mode of the computation's AgentConfig) with the computation id.
//
// # Hooks for other parts (hooks.go)
//
// Files of this package written for other issues install themselves from
// an init function, once each (a second registration panics):
//
//   - algorithm sandboxes (algosandbox.go): RegisterSandboxHandler(func(*Supervisor) SandboxHandler).
//     SandboxRequest messages from the runner's control channel go to
//     SandboxHandler.Request (concurrently, one goroutine each); the files it
//     returns are attached to the SandboxReply and then closed by the
//     supervisor. SandboxKill goes to Kill; KillAll is called when the runner
//     exits.
//   - measurement (measure.go): RegisterMeasurer(func(*Supervisor) func(ctx, kind, data)).
//     Called with MeasureTable and the table's canonical encoding before the
//     first child starts, and with MeasureRestart and JSON
//     {"child","generation","computation_id"} before every restarted child
//     runs. It runs on the supervisor's loop: keep it short (Supervisor.Command
//     to the attestation child is the way to reach the vTPM, with a timeout).
//   - manager link (supervisor/manager): RegisterManagerLink(func(ctx, *Supervisor) error),
//     from a file of this package that imports the manager package (the
//     manager package itself cannot import this one). It runs for the
//     supervisor's whole life and uses StartComputation, StopComputation,
//     AgentState, Events (AgentEvents with originator "supervisor" through
//     logfwd, buffered in memory while logfwd is down), Dialer("logfwd") for
//     reading the queue, and Config().EnvFile (--env, the Cocos env file).
//
// The supervisor publishes its own facts as events: supervisor.started,
// child.started, child.ready, child.exited, child.restarting, child.failed,
// child.start_failed, computation.started, computation.stopped,
// supervisor.shutdown.
//
// # Files on disk
//
// --state DIR holds agent/, computation/{datasets,results}/, runner/,
// logfwd/, attestation/ (children see them under /state). The run dir
// (/run/cvmd, or DIR/run in dev mode) holds libcontainer's state, the empty
// skeleton rootfs and children.json (name, status, pid in the supervisor's
// PID namespace, generation, restarts, serving), rewritten on every change.
//
// Test-only switches (never set in the VM): --test-panic-on-sigusr1 (the
// loop panics on SIGUSR1) and --test-misbehave CHILD=MODE (the child is
// replaced by `cvmd probe child MODE`, which sends garbage, stays silent,
// reports StartFailed or crashes). `cvmd probe exec` runs a check inside a
// running child's container, as `runc exec` would.
//
// Only cmd/cvmd imports this package. It imports sandbox, ipc, logsink and
// proto; children never import it.
package supervisor
