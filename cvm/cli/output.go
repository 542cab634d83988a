package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/status"
)

// IO is what a command writes to.
type IO struct {
	Out, Err io.Writer
	// JSON reports whether --json was given: print results as JSON, no
	// decoration.
	JSON bool
	// Terminal reports whether stderr is a terminal (progress bars only then).
	Terminal bool
}

// IOOf returns cmd's output settings.
func IOOf(cmd *cobra.Command) IO {
	o := optionsOf(cmd)
	j, _ := cmd.Flags().GetBool("json")
	tty := false
	if f, ok := o.Stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return IO{Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr(), JSON: j, Terminal: tty && !j}
}

// Print writes one result: v as a JSON object with --json, else the line.
func (o IO) Print(line string, v any) error {
	if o.JSON {
		enc := json.NewEncoder(o.Out)
		return enc.Encode(v)
	}
	_, err := fmt.Fprintln(o.Out, line)
	return err
}

// statusText returns the message of a gRPC status error, or err's text.
func statusText(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}
