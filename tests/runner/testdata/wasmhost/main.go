// Command wasmhost is `cvmd wasm-run` alone, for tests that run without a
// built cvmd (CVMD_BIN unset): same package, same arguments.
package main

import (
	"fmt"
	"os"

	"github.com/cvmd/cvmd/children/runner/wasmrun"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "wasm-run" {
		fmt.Fprintln(os.Stderr, "usage: wasmhost wasm-run ...")
		os.Exit(2)
	}
	os.Exit(wasmrun.Command(os.Args[2:]))
}
