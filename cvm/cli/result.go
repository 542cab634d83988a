package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/mem"

	"github.com/cvmd/cvmd/cocos/rolesig"
	agentpb "github.com/cvmd/cvmd/proto/agent"
)

func init() { Register("", newResultCmd) }

func newResultCmd() *cobra.Command {
	var dir, name string
	c := &cobra.Command{
		Use:   "result <private_key_file>",
		Short: "Download the computation's results (as a result consumer)",
		Long: `result downloads the results zip, signed as "consumer" with a key the manifest
declares. The file is written under a temporary name and renamed when complete,
so an interrupted download leaves no partial results file.`,
		Example: `  cvm result ./consumer_key.pem -o ./out -f results.zip`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			o := IOOf(cmd)
			ag, err := DialAgent(cmd)
			if err != nil {
				return err
			}
			defer ag.Close()
			ctx, err := signedContext(cmd.Context(), ag, a[0], rolesig.Consumer)
			if err != nil {
				return err
			}
			stream, err := ag.Result(ctx, &agentpb.ResultRequest{})
			if err != nil {
				return fmt.Errorf("downloading results: %s", statusText(err))
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			dst := filepath.Join(dir, name)
			tmp, err := os.CreateTemp(dir, "."+name+".part-*")
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name())
			defer tmp.Close()
			n, err := recvFile(stream, tmp, o, "results", func() (mem.BufferSlice, error) {
				return recvChunk(stream, &agentpb.ResultResponse{})
			})
			if err != nil {
				return fmt.Errorf("downloading results: %s", statusText(err))
			}
			if err := tmp.Close(); err != nil {
				return err
			}
			if err := os.Rename(tmp.Name(), dst); err != nil {
				return err
			}
			return o.Print(fmt.Sprintf("results saved to %s (%d bytes)", dst, n), map[string]any{"file": dst, "bytes": n})
		},
	}
	c.Flags().StringVarP(&dir, "output-dir", "o", ".", "directory for the results file")
	c.Flags().StringVarP(&name, "filename", "f", "results.zip", "name of the results file")
	return c
}
