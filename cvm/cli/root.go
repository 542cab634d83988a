package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/spf13/cobra"
)

// registration is one Register call.
type registration struct {
	parent string
	name   string
	make   func() *cobra.Command
}

var (
	regMu sync.Mutex
	regs  []registration // guarded by regMu; appended by init() functions
)

// Register adds the command that newCmd builds under the command at path
// parent below the root ("" is the root itself, "attestation" is
// `cvm attestation`). Call it from init(). newCmd is called once per tree
// (NewRoot), so flag variables belong to the closure, never to the package.
// Register panics on a duplicate, so a clash shows up at the first run.
func Register(parent string, newCmd func() *cobra.Command) {
	name := newCmd().Name()
	regMu.Lock()
	defer regMu.Unlock()
	for _, r := range regs {
		if r.parent == parent && r.name == name {
			panic(fmt.Sprintf("cli: command %q registered twice under %q", name, parent))
		}
	}
	regs = append(regs, registration{parent, name, newCmd})
}

// Options are what Main's caller supplies; the zero value means the
// process's own stdio and environment.
type Options struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Dial, if set, replaces the network: every agent connection is made
	// by it (tests use a socketpair). Security options still apply on top.
	Dial func(ctx context.Context) (net.Conn, error)
}

type optionsKey struct{}

func optionsOf(cmd *cobra.Command) *Options {
	if o, ok := cmd.Context().Value(optionsKey{}).(*Options); ok {
		return o
	}
	return &Options{}
}

// UsageError marks an error in how cvm was called (exit status 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Main runs cvm with args (without the program name) and returns the exit
// status: 0 on success, 1 on failure, 2 on a usage error. The one-line
// reason goes to stderr.
func Main(args []string) int {
	return Run(context.Background(), args, Options{})
}

// Run is Main with explicit stdio, environment and dialer.
func Run(ctx context.Context, args []string, o Options) int {
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	root := NewRoot(&o)
	root.SetArgs(args)
	root.SetIn(o.Stdin)
	root.SetOut(o.Stdout)
	root.SetErr(o.Stderr)
	ctx = context.WithValue(ctx, optionsKey{}, &o)
	_, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintf(o.Stderr, "cvm: %s\n", oneLine(err.Error()))
	var ue *UsageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return 2
	}
	return 1
}

// isCobraUsage reports whether err is one of cobra's own argument/flag
// errors. Cobra's bad flag value reads `invalid argument "v" for "--f"`; the
// agent's refusals read "invalid argument: …" and are not usage errors.
func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "requires exactly", `invalid argument "`, "flag needs an argument", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// NewRoot builds the whole command tree from the registrations. Each call
// returns a fresh tree (commands are copied), so tests can run it many times.
func NewRoot(o *Options) *cobra.Command {
	root := &cobra.Command{
		Use:   "cvm",
		Short: "Client for a cvmd (or Cocos) confidential computation agent",
		Long: `cvm talks to the agent running inside a confidential VM: it uploads the
algorithm and datasets of a computation, downloads its results, and fetches and
checks attestation evidence. It also makes keys and computes the checksums a
computation manifest needs.

The agent connection is configured with the same environment variables as
Cocos's CLI, each overridden by the matching flag:
  AGENT_GRPC_URL              --agent-url      agent address (host:port or unix:///path); default localhost:7001
  AGENT_GRPC_TIMEOUT          --timeout        connection timeout (Go duration); default 60s
  AGENT_GRPC_CLIENT_CERT      --client-cert    client certificate file (mTLS)
  AGENT_GRPC_CLIENT_KEY       --client-key     client private key file (mTLS)
  AGENT_GRPC_SERVER_CA_CERTS  --server-ca      CA certificates that sign the agent's certificate (TLS)
  AGENT_GRPC_ATTESTED_TLS     --attested-tls   use attested TLS (true/false)
  AGENT_GRPC_ATTESTATION_POLICY --attestation-policy  attestation policy file for aTLS: a CoRIM
                              (Cocos's or "cvm policy create-corim"'s) or a JSON policy
No CA and no aTLS means plaintext gRPC. aTLS also reads CVM_CORIM_KEY (':'-separated PEM
files of keys a signed CoRIM must be signed by), CVM_ATTESTATION_ALLOW_UNSIGNED_CORIM=true
(accept an unsigned CoRIM, as Cocos's CLI writes by default), CVM_TDX_COLLATERAL and
CVM_INTEL_ROOTS (TDX collateral bundle and roots, as verify --tdx-collateral/--intel-roots)
and CVM_ATTESTATION_ALLOW_SIMULATED=true (development VMs).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	addConnFlags(root)
	root.PersistentFlags().Bool("json", false, "print results as JSON (for scripts)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &UsageError{err} })

	regMu.Lock()
	rs := append([]registration(nil), regs...)
	regMu.Unlock()
	// Attach in rounds: a registration whose parent is not in the tree yet
	// waits for the next round, so init order across files does not matter.
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].name < rs[j].name })
	byPath := map[string]*cobra.Command{"": root}
	for pending := rs; len(pending) > 0; {
		var next []registration
		for _, r := range pending {
			p, ok := byPath[r.parent]
			if !ok {
				next = append(next, r)
				continue
			}
			c := r.make()
			p.AddCommand(c)
			byPath[strings.TrimSpace(r.parent+" "+c.Name())] = c
		}
		if len(next) == len(pending) {
			// Parents nobody registered: make plain groups, level by level.
			for _, r := range next {
				path := ""
				for _, name := range strings.Fields(r.parent) {
					parent := byPath[path]
					path = strings.TrimSpace(path + " " + name)
					if _, ok := byPath[path]; !ok {
						group := &cobra.Command{Use: name, Short: name + " commands"}
						parent.AddCommand(group)
						byPath[path] = group
					}
				}
			}
		}
		pending = next
	}
	return root
}
