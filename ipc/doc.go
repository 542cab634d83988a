// Package ipc is how cvmd's processes talk without socket files: socketpairs,
// fd passing (SCM_RIGHTS), the control channel framing, and gRPC over fds.
//
// Three kinds of descriptors exist:
//
//   - a control channel (fd 3 of every child): a SOCK_SEQPACKET socketpair with
//     the supervisor carrying one control.Message per packet, fds attached;
//   - an edge: a SOCK_SEQPACKET socketpair between a client child and a server
//     child. The client makes a connection by creating a SOCK_STREAM socketpair
//     and sending one end over the edge (Dialer); the server receives it as an
//     accepted connection (Listener). Making a connection therefore needs
//     socketpair(2) but never socket(2), which seccomp denies to most children;
//   - a connection: the SOCK_STREAM end itself, an ordinary net.Conn.
//
// When a server child restarts, the supervisor makes a fresh edge and hands the
// client its new end (Dialer.Replace); when a client restarts, the server gets
// the new end (Listener.Add). Nothing else restarts.
//
// ipc imports neither supervisor/ nor sandbox/ nor children/; anyone may import it.
// It does not log.
package ipc
