package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cvmd/cvmd/cocos/rolesig"
)

func init() { Register("", newKeysCmd) }

func newKeysCmd() *cobra.Command {
	var kind, dir string
	var force bool
	c := &cobra.Command{
		Use:   "keys",
		Short: "Make a key pair for signing requests (private.pem, public.pem)",
		Long: `keys makes a key pair in the PEM formats Cocos's CLI uses: RSA-4096 (PKCS#1
under "PRIVATE KEY"), ECDSA P-256 (SEC 1 under "EC PRIVATE KEY") or Ed25519
(PKCS#8 under "PRIVATE KEY"); the public key is PKIX under "PUBLIC KEY", which
is what a manifest's user_key holds (base64 of its DER). Existing files are
not overwritten unless --force is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			priv, pub, err := rolesig.NewKey(kind)
			if err != nil {
				return &UsageError{fmt.Errorf("key type %q: want rsa, ecdsa or ed25519", kind)}
			}
			privPath, pubPath := filepath.Join(dir, "private.pem"), filepath.Join(dir, "public.pem")
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			for _, f := range []struct {
				path string
				data []byte
				mode os.FileMode
			}{{privPath, priv, 0o600}, {pubPath, pub, 0o644}} {
				w, err := os.OpenFile(f.path, flags, f.mode)
				if err != nil {
					return fmt.Errorf("writing key: %w", err)
				}
				_, err = w.Write(f.data)
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return fmt.Errorf("writing key: %w", err)
				}
			}
			return IOOf(cmd).Print(fmt.Sprintf("%s key pair written to %s and %s", kind, privPath, pubPath),
				map[string]string{"type": kind, "private": privPath, "public": pubPath})
		},
	}
	c.Flags().StringVarP(&kind, "key-type", "k", "rsa", "key type: rsa, ecdsa or ed25519")
	c.Flags().StringVar(&dir, "dir", ".", "directory for private.pem and public.pem")
	c.Flags().BoolVar(&force, "force", false, "overwrite existing key files")
	return c
}
