// Package initfirst runs libcontainer's `init` re-exec from a package
// initialiser, so that it starts as early as Go's initialisation order
// allows: right after libcontainer and its own dependencies, before the
// packages of the rest of the binary (gRPC, protobuf registries, wazero,
// go-sev-guest, the children) are initialised. Every sandbox spawn starts
// the binary as `<exe> init`, and that process execs the child at once, so
// whatever initialisers run before it are paid once more per spawn for
// nothing. libcontainer.Init never returns.
//
// It acts only when os.Args[1] is "init" and libcontainer's init pipe is in
// the environment; otherwise it does nothing. Only cmd/cvmd imports it (for
// its side effect), together with libcontainer/nsenter.
package initfirst

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		libcontainer.Init()
	}
}
