// Command cvm is the user's CLI for cvmd (and Cocos) agents. All of it lives
// in package cli; this is the entry point and the exit code.
package main

import (
	"os"

	"github.com/cvmd/cvmd/cvm/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
