package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"

	"github.com/cvmd/cvmd/cocos/chunks"
	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/cocos/zipdir"
	agentpb "github.com/cvmd/cvmd/proto/agent"
)

func init() { Register("", newDataCmd) }

func newDataCmd() *cobra.Command {
	var decompress bool
	c := &cobra.Command{
		Use:   "data <dataset_path> <private_key_file>",
		Short: "Upload a dataset (as a data provider)",
		Long: `data streams a dataset to the agent, signed as "data-provider". The dataset is
matched to the manifest by its file name (the base name of dataset_path). A
directory is first zipped, deterministically, to a temporary file (the same
bytes "cvm checksum" hashes); with --decompress the agent unpacks the zip into
its datasets directory.`,
		Example: `  cvm data ./iris.csv ./data_key.pem
  cvm data ./images/ ./data_key.pem --decompress`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			o := IOOf(cmd)
			path := filepath.Clean(a[0])
			st, err := os.Stat(path)
			if err != nil {
				return fmt.Errorf("dataset: %w", err)
			}
			name := filepath.Base(path)
			src := path
			if st.IsDir() {
				tmp, err := os.MkdirTemp("", "cvm-dataset-*")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				src = filepath.Join(tmp, name+".zip")
				if err := zipdir.WriteDirFile(src, path); err != nil {
					return fmt.Errorf("zipping dataset directory: %w", err)
				}
			}
			f, err := os.Open(src)
			if err != nil {
				return fmt.Errorf("opening dataset: %w", err)
			}
			defer f.Close()
			if st, err = f.Stat(); err != nil {
				return err
			}
			ag, err := DialAgent(cmd)
			if err != nil {
				return err
			}
			defer ag.Close()
			ctx, err := signedContext(cmd.Context(), ag, a[1], rolesig.DataProvider)
			if err != nil {
				return err
			}
			ctx = metadata.AppendToOutgoingContext(ctx, "decompress", strconv.FormatBool(decompress))
			stream, err := ag.Data(ctx)
			if err != nil {
				return fmt.Errorf("uploading dataset: %s", statusText(err))
			}
			p := newProgress(o, st.Size(), name)
			rest := &agentpb.DataRequest{Filename: name} // in every message, as Cocos's CLI
			n, err := sendFile(f, p, func(b mem.BufferSlice) error {
				return stream.SendMsg(&chunks.Message{Field: fileField, Data: b, Rest: rest})
			})
			p.done()
			if err != nil {
				return uploadErr("dataset", stream.CloseAndRecv, err)
			}
			if _, err := stream.CloseAndRecv(); err != nil {
				return fmt.Errorf("uploading dataset %s: %s", name, statusText(err))
			}
			return o.Print(fmt.Sprintf("dataset %s uploaded (%d bytes)", name, n), map[string]any{"uploaded": "dataset", "filename": name, "bytes": n})
		},
	}
	c.Flags().BoolVarP(&decompress, "decompress", "d", false, "ask the agent to unzip the dataset")
	return c
}
