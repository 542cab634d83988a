package cli

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	agentpb "github.com/cvmd/cvmd/proto/agent"
)

func init() { Register("", newIMACmd) }

func newIMACmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ima-measurements [output_file]",
		Short: "Download the guest kernel's IMA measurement list and check it against PCR10",
		Long: `ima-measurements downloads the IMA runtime measurement list (default file
ima_measurements) and, when the agent sends PCR10, replays the list's PCR 10
entries (SHA-1 chain; an all-zero digest counts as all 0xff) and compares.
A mismatch is an error.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			out := "ima_measurements"
			if len(a) == 1 {
				out = a[0]
			}
			ag, err := DialAgent(cmd)
			if err != nil {
				return err
			}
			defer ag.Close()
			o := IOOf(cmd)
			stream, err := ag.IMAMeasurements(cmd.Context(), &agentpb.IMAMeasurementsRequest{})
			if err != nil {
				return fmt.Errorf("getting IMA measurements: %s", statusText(err))
			}
			var list bytes.Buffer
			var pcr10 []byte
			_, err = recvFile(stream, &list, o, "IMA", func() ([]byte, error) {
				m, err := stream.Recv()
				pcr10 = append(pcr10, m.GetPcr10()...)
				return m.GetFile(), err
			})
			if err != nil {
				return fmt.Errorf("getting IMA measurements: %s", statusText(err))
			}
			if err := os.WriteFile(out, list.Bytes(), 0o644); err != nil {
				return err
			}
			res := map[string]any{"file": out, "bytes": list.Len()}
			if len(pcr10) == 0 {
				res["pcr10"] = "not sent"
				return o.Print(fmt.Sprintf("IMA list saved to %s; the agent sent no PCR10 to check it against", out), res)
			}
			got := replayPCR10(list.Bytes())
			res["pcr10"], res["replayed"] = hex.EncodeToString(pcr10), hex.EncodeToString(got)
			if !bytes.Equal(got, pcr10) {
				return fmt.Errorf("IMA list does not match PCR10: replayed %x, PCR10 is %x", got, pcr10)
			}
			return o.Print(fmt.Sprintf("IMA list saved to %s and matches PCR10 %x", out, pcr10), res)
		},
	}
}

// replayPCR10 extends a SHA-1 PCR with the template hash of every PCR 10
// line of an ascii_runtime_measurements list.
func replayPCR10(list []byte) []byte {
	pcr := make([]byte, sha1.Size)
	ff := bytes.Repeat([]byte{0xff}, sha1.Size)
	sc := bufio.NewScanner(bytes.NewReader(list))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "10" {
			continue
		}
		d, err := hex.DecodeString(f[1])
		if err != nil || len(d) != sha1.Size {
			continue
		}
		if bytes.Equal(d, make([]byte, sha1.Size)) {
			d = ff
		}
		h := sha1.New()
		h.Write(pcr)
		h.Write(d)
		pcr = h.Sum(nil)
	}
	return pcr
}
