package cli

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/mem"

	"github.com/cvmd/cvmd/attest/verify"
	agentpb "github.com/cvmd/cvmd/proto/agent"
)

func init() { Register("", newIMACmd) }

func newIMACmd() *cobra.Command {
	var quote bool
	var platform, bundlePath string
	var aks []string
	var allowSim bool
	var pf policyFlags
	c := &cobra.Command{
		Use:   "ima-measurements [output_file]",
		Short: "Download the guest kernel's IMA measurement list and check it against PCR 10",
		Long: `ima-measurements downloads the IMA runtime measurement list (default file
ima_measurements), replays its PCR 10 entries (SHA-1 template hashes; an
all-zero one counts as all 0xff) and compares the result with PCR 10.

The PCR 10 the agent sends with the list is not signed. With --quote, cvm
also asks for vTPM evidence over a fresh random nonce, verifies it as
"attestation verify" does (--ak, --policy, --amd-bundle, --allow-simulated;
--platform vtpm, snp-vtpm or azure) and compares the list with PCR 10 of the
verified quote: then the list is what the TPM measured. A mismatch is an error.`,
		Example: `  cvm ima-measurements ima.txt --quote --ak $AK`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			out := "ima_measurements"
			if len(a) == 1 {
				out = a[0]
			}
			typ, ok := map[string]int32{"vtpm": 1, "snp-vtpm": 2, "azure": 3}[platform]
			if !ok {
				return &UsageError{fmt.Errorf("--platform %q: want vtpm, snp-vtpm or azure", platform)}
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
			var mixed bool
			_, err = recvFile(stream, &list, o, "IMA", func() (mem.BufferSlice, error) {
				m := &agentpb.IMAMeasurementsResponse{}
				file, err := recvChunk(stream, m)
				// Cocos's agent sends PCR 10 in the first message, cvmd's in
				// every one (Cocos's CLI needs that); they must agree.
				if p := m.GetPcr10(); len(p) > 0 {
					if pcr10 != nil && !bytes.Equal(p, pcr10) {
						mixed = true
					}
					pcr10 = p
				}
				return file, err
			})
			if err != nil {
				return fmt.Errorf("getting IMA measurements: %s", statusText(err))
			}
			if mixed {
				return fmt.Errorf("the agent sent differing PCR10 values in one IMA stream")
			}
			if err := os.WriteFile(out, list.Bytes(), 0o644); err != nil {
				return err
			}
			got := replayPCR10(list.Bytes())
			res := map[string]any{"file": out, "bytes": list.Len(), "replayed": hex.EncodeToString(got), "quote_checked": quote}
			line := "IMA list saved to " + out
			if len(pcr10) > 0 {
				res["pcr10"] = hex.EncodeToString(pcr10)
				if !bytes.Equal(got, pcr10) {
					return fmt.Errorf("IMA list does not match PCR10: replayed %x, PCR10 is %x", got, pcr10)
				}
				line += fmt.Sprintf(" and matches PCR10 %x", pcr10)
			} else if !quote {
				res["pcr10"] = "not sent"
				line += "; the agent sent no PCR10 to check it against"
			}
			if !quote {
				return o.Print(line+"\nWARNING: PCR10 as the agent read it, not from a signed quote (use --quote)", res)
			}
			vo := verify.Options{AllowSimulated: allowSim}
			if vo.Policy, err = pf.load(); err != nil {
				return err
			}
			vo.Policy.CVMD.TrustedAKSHA256 = append(vo.Policy.CVMD.TrustedAKSHA256, aks...)
			if bundlePath != "" {
				if vo.AMDBundle, err = os.ReadFile(bundlePath); err != nil {
					return fmt.Errorf("reading AMD bundle: %w", err)
				}
			}
			nonce, tee := make([]byte, 32), make([]byte, 64)
			rand.Read(nonce)
			rand.Read(tee)
			vo.Nonce, vo.ReportData = nonce, tee
			var tok bytes.Buffer
			if _, err := fetchEvidence(cmd, ag, &agentpb.AttestationRequest{TeeNonce: tee, VtpmNonce: nonce, Type: typ}, &tok); err != nil {
				return err
			}
			r, err := verify.Token(tok.Bytes(), vo)
			if err != nil {
				return fmt.Errorf("vTPM quote for PCR 10: %w", err)
			}
			quoted, ok := r.PCRsSHA1[10]
			if !ok {
				return fmt.Errorf("the verified quote has no SHA-1 PCR 10 (the TPM has no SHA-1 bank)")
			}
			res["quoted_pcr10"] = hex.EncodeToString(quoted)
			if !bytes.Equal(got, quoted) {
				return fmt.Errorf("IMA list does not match PCR10 of the verified quote: replayed %x, quoted %x", got, quoted)
			}
			if r.Simulated {
				line += "\nWARNING: SIMULATED platform"
			}
			return o.Print(fmt.Sprintf("%s; it matches PCR10 %x of a verified %s quote (fresh nonce)", line, quoted, r.Claims.PlatformType), res)
		},
	}
	f := c.Flags()
	f.BoolVar(&quote, "quote", false, "also check the list against PCR 10 of a verified vTPM quote over a fresh nonce")
	f.StringVar(&platform, "platform", "vtpm", "evidence for --quote: vtpm, snp-vtpm or azure")
	f.StringArrayVar(&aks, "ak", nil, "trusted TPM AK (SHA-256 of its public area, hex), for --quote on vtpm")
	f.StringVar(&bundlePath, "amd-bundle", "", "PEM with the AMD ASK and ARK, for --quote on snp-vtpm or azure")
	f.BoolVar(&allowSim, "allow-simulated", false, "accept a simulated platform (development only)")
	pf.add(c)
	return c
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
