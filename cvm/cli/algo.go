package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/cocos/chunks"
	"github.com/cvmd/cvmd/cocos/rolesig"
	agentpb "github.com/cvmd/cvmd/proto/agent"
)

func init() { Register("", newAlgoCmd) }

func newAlgoCmd() *cobra.Command {
	var algoType, pyRuntime, requirements string
	var args []string
	c := &cobra.Command{
		Use:   "algo <algorithm_file> <private_key_file>",
		Short: "Upload the computation's algorithm (as the algorithm provider)",
		Long: `algo streams the algorithm file to the agent, signed as "algorithm-provider"
with the private key (PEM) whose public key the manifest declares. The agent
checks the file's SHA3-256 against the manifest.`,
		Example: `  cvm algo ./model.py ./algo_key.pem -a python -r requirements.txt --args=--epochs --args=3`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			o := IOOf(cmd)
			f, err := os.Open(a[0])
			if err != nil {
				return fmt.Errorf("opening algorithm: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			var reqs []byte
			if requirements != "" {
				if reqs, err = os.ReadFile(requirements); err != nil {
					return fmt.Errorf("reading requirements: %w", err)
				}
			}
			ag, err := DialAgent(cmd)
			if err != nil {
				return err
			}
			defer ag.Close()
			ctx, err := signedContext(cmd.Context(), ag, a[1], rolesig.AlgorithmProvider)
			if err != nil {
				return err
			}
			ctx = metadata.AppendToOutgoingContext(ctx, "algo_type", algoType, "python_runtime", pyRuntime)
			for _, x := range args {
				ctx = metadata.AppendToOutgoingContext(ctx, "algo_args", x)
			}
			stream, err := ag.Algo(ctx)
			if err != nil {
				return fmt.Errorf("uploading algorithm: %s", statusText(err))
			}
			// Requirements first, then the algorithm, as Cocos's CLI does.
			for i := 0; i < len(reqs); i += chunkSize {
				if err := stream.Send(&agentpb.AlgoRequest{Requirements: reqs[i:min(i+chunkSize, len(reqs))]}); err != nil {
					return uploadErr("algorithm", stream.CloseAndRecv, err)
				}
			}
			p := newProgress(o, st.Size(), "algorithm")
			n, err := sendFile(f, p, func(b mem.BufferSlice) error {
				return stream.SendMsg(&chunks.Message{Field: fileField, Data: b, Rest: &agentpb.AlgoRequest{}})
			})
			p.done()
			if err != nil {
				return uploadErr("algorithm", stream.CloseAndRecv, err)
			}
			if _, err := stream.CloseAndRecv(); err != nil {
				return fmt.Errorf("uploading algorithm: %s", statusText(err))
			}
			return o.Print(fmt.Sprintf("algorithm uploaded (%d bytes)", n), map[string]any{"uploaded": "algorithm", "bytes": n})
		},
	}
	c.Flags().StringVarP(&algoType, "algorithm", "a", "bin", "algorithm type: bin, python, wasm or docker")
	c.Flags().StringVar(&pyRuntime, "python-runtime", "python3", "python runtime for python algorithms")
	c.Flags().StringVarP(&requirements, "requirements", "r", "", "requirements.txt for python algorithms")
	c.Flags().StringArrayVar(&args, "args", nil, "an argument for the algorithm (repeat for more)")
	return c
}

// uploadErr prefers the server's reason (from closing the stream) over a
// local send error, which is usually just EOF after the server refused.
func uploadErr[T any](what string, closeAndRecv func() (T, error), sendErr error) error {
	if _, err := closeAndRecv(); err != nil {
		return fmt.Errorf("uploading %s: %s", what, statusText(err))
	}
	return fmt.Errorf("uploading %s: %v", what, sendErr)
}
