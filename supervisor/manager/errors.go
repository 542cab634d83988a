package manager

import "errors"

// ErrNoConfig means no manager URL was configured anywhere (neither the
// environment file nor the kernel command line): the VM runs without a
// manager link.
var ErrNoConfig = errors.New("manager: no AGENT_CVM_GRPC_URL configured")

// errDisconnect ends a session when the manager sends disconnectReq; the
// link reconnects at once.
var errDisconnect = errors.New("manager: disconnect requested")

// errStreamSend wraps a failed Send on the log stream, which ends the
// session (a failed Read from logfwd does not).
var errStreamSend = errors.New("manager: sending on log stream")
