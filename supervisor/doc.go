// Package supervisor is `cvmd supervise`: cvmd's PID 1 and the supervisor
// proper it runs. It parses the flags, picks the process's role, and for
// the supervisor proper builds every part explicitly and connects them
// (run.go). There are no registries: what runs is what runProper builds.
//
// # Processes
//
// `cvmd supervise` (or cvmd as PID 1 with no argument) is three roles:
//
//   - dev launcher (--dev on a workstation, pid1.RunDev): re-executes itself
//     as PID 1 of new PID and mount namespaces and waits, passing on
//     SIGTERM/SIGINT/SIGPWR;
//   - PID 1 (pid1.Run): mounts, moves an initramfs root into a tmpfs, seals
//     the binary, brings up the guest's devices, reaps orphans, turns
//     SIGTERM/SIGINT/SIGPWR into one orderly shutdown, and runs the
//     supervisor proper as its only managed child, restarting it if it
//     dies: a panic in the supervisor logic never reaches PID 1;
//   - supervisor proper (--proper, runProper): owns the sandboxes, every
//     fd, the restart policy and the manager link.
//
// # Parts (one package each)
//
//   - supervisor/table: the child table, the one place that says what a
//     child is (entry point, settings, sandbox, fds, deps, scope, role), and
//     its measured canonical encoding. `cvmd supervise --print-sandbox`
//     prints it and its SHA-256.
//   - supervisor/lifecycle: the event loop that starts, wires, restarts and
//     stops the children of the table; children.json.
//   - supervisor/algosandbox: the runner's algorithm sandboxes.
//   - supervisor/measure: the table, restarts (PCR 15) and manifests (PCR
//     16), through the attestation child.
//   - supervisor/manager: the manager link (Cocos's CVMS protocol) and the
//     one parser of Cocos's environment file.
//   - supervisor/pid1: PID 1's duties and the guest's devices.
//   - supervisor/probe: test-only, see below.
//
// This package adds the computation sequence the manager link drives
// (computation.go): the lifecycle loop prepares the children, the agent
// runs the computation, the measurer extends PCR 16 with its manifest; and
// the state directory's storage (storage.go: the scratch disk PID 1 set up,
// or memory), measured right after the table and announced as
// storage.ready, which sizes the log queue, the results cap and the
// agent's free-space floor, and whose failed tags become
// storage.integrity_error events.
//
// # Child contract
//
// Each child gets fd 3 (control channel, SOCK_SEQPACKET) and its edge ends
// and extra fds as fds 4, 5, ... in name order; the first control message
// is control.Hello with a ChildConfig naming every fd and carrying the
// child's typed settings (table.ChildSpec.Settings). A child answers Ready
// (or StartFailed, logged in its own words); garbage on the channel, or no
// Ready within the table's ReadyTimeout, counts as a failure (the child is
// killed and the restart policy applies; the supervisor never crashes).
// When a child restarts, each running peer receives control.Rewire with a
// fresh end for that edge; the supervisor's own dialers are replaced. For
// the children it dials itself (agent, logfwd) the supervisor then makes one
// gRPC call over the new edge and records in children.json ("serving")
// that the new generation answered.
//
// The supervisor publishes its own facts as events: supervisor.started,
// child.started, child.ready, child.exited (a failure), child.replaced (a
// new computation replaced it), child.stopped (shutdown), child.restarting,
// child.failed, child.start_failed, computation.started,
// computation.manifest_measured, computation.stopped, storage.ready,
// storage.integrity_error, supervisor.shutdown.
//
// # Files on disk
//
// --state DIR holds the children's state directories (agent/,
// computation/, runner/, logfwd/, attestation/: the table's StateDirs;
// children see them under /state). The run dir (/run/cvmd, or DIR/run in
// dev mode) holds libcontainer's state, the empty skeleton rootfs, the
// algorithm sandboxes' scratch and children.json (name, status, pid in the
// supervisor's PID namespace, generation, restarts, serving), rewritten on
// every change.
//
// # Test build
//
// Test switches exist only in a test build (-tags cvmdtest, make's
// bin/cvmd-test; testflags_cvmdtest.go): --test-panic-on-sigusr1 (the loop
// panics on SIGUSR1), --test-misbehave CHILD=MODE (the child is replaced by
// `cvmd probe child MODE`, which sends garbage, stays silent, reports
// StartFailed, crashes or ignores Stop) and the `cvmd probe` command (`cvmd
// probe exec` runs a check inside a running child's container, as `runc
// exec` would). The measured binary (bin/cvmd) has none of them, so it
// cannot behave otherwise than measured; a test build says so in its log.
//
// Only cmd/cvmd imports this package. It imports the supervisor/* packages,
// sandbox, ipc, proto, cocos/manifest and pull (for a computation's pull
// grant); children never import it.
package supervisor
