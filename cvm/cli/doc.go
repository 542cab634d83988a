// Package cli is the `cvm` command line: the user's client for the agent
// (algo, data, result, attestation, ima-measurements), offline helpers (keys,
// checksum) and commands other packages add (attestation verify, manager).
//
// # Adding a command
//
// A command lives in its own file and registers itself from init(); nobody
// edits a shared list:
//
//	// cli/manager.go
//	package cli
//
//	func init() { Register("", newManagerCmd) }
//
//	func newManagerCmd() *cobra.Command {
//		var addr string // flag variables live in the constructor's closure
//		c := &cobra.Command{Use: "manager", Short: "...", RunE: func(cmd *cobra.Command, args []string) error { ... }}
//		c.Flags().StringVar(&addr, "listen", "127.0.0.1:7001", "...")
//		return c
//	}
//
// Register(parent, newCmd) adds the command newCmd builds under the command
// whose path below the root is parent ("" = the root, "attestation" =
// `cvm attestation`, which exists: add `verify` there). Parents are
// resolved when the tree is built (in Main), so init order across files does
// not matter. A command in another package (cli/xyz) registers the same way
// and is linked in by one blank import in cmd/cvm/main.go.
//
// # What commands get
//
//   - DialAgent(cmd) dials the agent from Cocos's environment variables
//     (AGENT_GRPC_URL, AGENT_GRPC_CLIENT_CERT, AGENT_GRPC_CLIENT_KEY,
//     AGENT_GRPC_SERVER_CA_CERTS, AGENT_GRPC_ATTESTED_TLS, ...) overridden by
//     the root's persistent flags (--agent-url, --client-cert, ...), and runs the
//     health check Cocos's CLI runs.
//   - IOOf(cmd) gives the command's stdout/stderr and whether --json was asked
//     for; Print writes one result either as a line or as JSON.
//   - Return an error from RunE: Main prints "cvm: <error>" on one line and
//     exits 1 (usage errors exit 2). Never os.Exit in a command.
//
// aTLS: the only place the attested-TLS dialer plugs in is atlsDialOptions
// in atls.go.
//
// cli is imported only by cmd/cvm and by tests; it never imports children/,
// supervisor/ or sandbox/.
package cli
