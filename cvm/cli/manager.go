package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/credentials"

	"github.com/cvmd/cvmd/cvm/devmanager"
	"github.com/cvmd/cvmd/proto/cvms"
)

func init() { Register("", newManagerCmd) }

func newManagerCmd() *cobra.Command {
	var (
		listen, manifest             string
		spec                         devmanager.Spec
		tlsCert, tlsKey, clientCA    string
		attested                     bool
		agentCert, agentKey, agentCA string
		agentServerCA                string
		unchunked                    bool
		chunkSize                    int
		algoURL, algoSrcType         string
		algoKBSPath                  string
		algoEncrypted                bool
		remoteDatasets               []string
	)
	c := &cobra.Command{
		Use:   "manager",
		Short: "run a development manager (CVMS server) that sends one computation and shows logs and events",
		Long: `manager is a development CVMS server, the counterpart of Cocos's test server.
The guest dials it (AGENT_CVM_GRPC_URL). On the guest's first control stream it
sends the computation given by --manifest (Cocos's manifest JSON) or built from
--algo/--dataset/--public-key (remote sources: --algo-url, --remote-dataset,
--kbs-url), chunked as Cocos's server does. Every message
the guest sends is printed, one per line (--json: one JSON object per line).

Commands, one per line on stdin:
  state            send agentStateReq
  stop [id]        send stopComputation
  disconnect       send disconnectReq (the guest reconnects)
  run              send the computation again
  quit             exit`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			io := IOOf(cmd)
			var req *cvms.ComputationRunReq
			var err error
			switch {
			case manifest != "":
				b, rerr := os.ReadFile(manifest)
				if rerr != nil {
					return fmt.Errorf("reading manifest: %w", rerr)
				}
				req, err = devmanager.ParseManifest(b)
			case spec.Algorithm != "" || algoURL != "":
				if algoURL != "" {
					spec.AlgoSource = &cvms.Source{Url: algoURL, Type: algoSrcType, Encrypted: algoEncrypted, KbsResourcePath: algoKBSPath}
				}
				for _, v := range remoteDatasets {
					d, derr := devmanager.ParseRemoteDataset(v)
					if derr != nil {
						return derr
					}
					spec.RemoteDatasets = append(spec.RemoteDatasets, d)
				}
				if attested || agentCert != "" || clientCA != "" || agentCA != "" {
					spec.AgentConfig = &cvms.AgentConfig{Port: "7002", AttestedTls: attested, CertFile: agentCert,
						KeyFile: agentKey, ClientCaFile: agentCA, ServerCaFile: agentServerCA}
				}
				req, err = spec.Build()
			}
			if err != nil {
				return err
			}
			var creds credentials.TransportCredentials
			if tlsCert != "" {
				cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					return fmt.Errorf("loading --tls-cert/--tls-key: %w", err)
				}
				tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
				if clientCA != "" {
					pemBytes, err := os.ReadFile(clientCA)
					if err != nil {
						return fmt.Errorf("reading --client-ca: %w", err)
					}
					pool := x509.NewCertPool()
					if !pool.AppendCertsFromPEM(pemBytes) {
						return fmt.Errorf("--client-ca %s holds no PEM certificate", clientCA)
					}
					tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
				}
				creds = credentials.NewTLS(tc)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := devmanager.New(devmanager.Options{Computation: req, Out: io.Out, JSON: io.JSON, Unchunked: unchunked, ChunkSize: chunkSize})
			ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer cancel()
			if !io.JSON {
				fmt.Fprintf(io.Err, "manager: listening on %s\n", ln.Addr())
			}
			go readCommands(ctx, cancel, cmd, srv)
			return devmanager.Serve(ctx, ln, srv, creds)
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7001", "address to listen on")
	f.StringVar(&manifest, "manifest", "", "Cocos manifest JSON file to send")
	f.StringVar(&spec.ID, "id", "1", "computation id")
	f.StringVar(&spec.Name, "name", "sample computation", "computation name")
	f.StringVar(&spec.Description, "description", "", "computation description")
	f.StringVar(&spec.Algorithm, "algo", "", "algorithm file (hashed with SHA3-256)")
	f.StringVar(&spec.AlgoType, "algo-type", "bin", "algorithm type: bin, python, wasm, docker")
	f.StringSliceVar(&spec.AlgoArgs, "algo-arg", nil, "algorithm argument (repeatable)")
	f.StringSliceVar(&spec.Datasets, "dataset", nil, "dataset file (repeatable); its base name is the manifest filename")
	f.StringVar(&spec.PublicKey, "public-key", "", "PEM public key for every role unless overridden")
	f.StringVar(&spec.AlgoKey, "algo-key", "", "PEM public key of the algorithm provider")
	f.StringVar(&spec.DataKey, "data-key", "", "PEM public key of the data providers")
	f.StringSliceVar(&spec.ConsumerKeys, "consumer-key", nil, "PEM public key of a result consumer (repeatable)")
	f.BoolVar(&attested, "attested-tls", false, "agent_config.attested_tls")
	f.StringVar(&agentCert, "agent-cert", "", "agent_config.cert_file (path or PEM)")
	f.StringVar(&agentKey, "agent-key", "", "agent_config.key_file (path or PEM)")
	f.StringVar(&agentCA, "agent-client-ca", "", "agent_config.client_ca_file (non-empty: mTLS to the agent)")
	f.StringVar(&agentServerCA, "agent-server-ca", "", "agent_config.server_ca_file")
	f.StringVar(&tlsCert, "tls-cert", "", "serve TLS with this certificate")
	f.StringVar(&tlsKey, "tls-key", "", "key of --tls-cert")
	f.StringVar(&clientCA, "client-ca", "", "require guest client certificates signed by this CA (mTLS)")
	f.StringVar(&algoURL, "algo-url", "", "pull mode: the agent fetches the algorithm from this URL (https://, s3://, gs://, docker://...); --algo or --algo-hash gives its hash")
	f.StringVar(&spec.AlgoHash, "algo-hash", "", "SHA3-256 (hex) of a remote algorithm with no local copy")
	f.StringVar(&algoSrcType, "algo-source-type", "", "Source.type of --algo-url: https, http, s3, gcs, oci-image")
	f.BoolVar(&algoEncrypted, "algo-encrypted", false, "the remote algorithm is encrypted; its key comes from --kbs-url at --algo-kbs-path")
	f.StringVar(&algoKBSPath, "algo-kbs-path", "", "KBS resource path of the remote algorithm's key (repo/type/tag)")
	f.StringVar(&spec.KBSURL, "kbs-url", "", "KBS of every encrypted remote resource")
	f.StringArrayVar(&remoteDatasets, "remote-dataset", nil, "pull mode: url=URL,hash=HEX|file=PATH[,type=T][,filename=F][,encrypted][,kbs-path=P][,decompress] (repeatable)")
	f.BoolVar(&spec.NoFilenames, "no-filenames", false, "send --dataset entries without filename (uploads matched by hash)")
	f.BoolVar(&unchunked, "unchunked", false, "send one runReq instead of runReqChunks")
	f.IntVar(&chunkSize, "chunk-size", 1<<20, "runReqChunks data size")
	return c
}

func readCommands(ctx context.Context, cancel context.CancelFunc, cmd *cobra.Command, srv *devmanager.Server) {
	in := cmd.InOrStdin()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if ctx.Err() != nil {
			return
		}
		line := sc.Text()
		if line == "quit" || line == "exit" {
			cancel()
			return
		}
		if err := srv.Command(line); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "manager: %v\n", err)
		}
	}
	// EOF on stdin (e.g. /dev/null in the background) does not stop the server.
}
