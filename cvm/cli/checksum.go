package cli

import (
	"encoding/base64"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cvmd/cvmd/cocos/digest"
	"github.com/cvmd/cvmd/cocos/manifest"
)

func init() { Register("", newChecksumCmd) }

func newChecksumCmd() *cobra.Command {
	var isManifest, b64 bool
	c := &cobra.Command{
		Use:   "checksum <file_or_directory>",
		Short: "Print the SHA3-256 a manifest declares for a file, directory or manifest",
		Long: `checksum prints the SHA3-256 of a file's bytes, or of a directory's
deterministic zip (the bytes "cvm data" uploads for a directory), in hex (or
base64 with --base64). With --manifest the file is a computation manifest
(Cocos's JSON) and the checksum is Cocos's: of the manifest re-encoded in its
canonical form.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			var sum [32]byte
			var err error
			if isManifest {
				data, rerr := os.ReadFile(a[0])
				if rerr != nil {
					return fmt.Errorf("reading manifest: %w", rerr)
				}
				sum, err = manifest.Checksum(data)
			} else {
				sum, err = digest.Path(a[0])
			}
			if err != nil {
				return err
			}
			s := digest.Hex(sum)
			if b64 {
				s = base64.StdEncoding.EncodeToString(sum[:])
			}
			return IOOf(cmd).Print(s, map[string]string{"path": a[0], "sha3_256": s})
		},
	}
	c.Flags().BoolVarP(&isManifest, "manifest", "m", false, "the file is a computation manifest")
	c.Flags().BoolVarP(&b64, "base64", "b", false, "print base64 instead of hex")
	return c
}
