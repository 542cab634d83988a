// Command wasmcount is the `wasm` sample algorithm (GOOS=wasip1): it counts
// the data rows of every file in datasets/ and writes the counts to
// results/count.txt (paths relative to /cocos).
package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	ents, err := os.ReadDir("/cocos/datasets")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading datasets:", err)
		os.Exit(1)
	}
	var b strings.Builder
	for _, e := range ents {
		f, err := os.Open(filepath.Join("/cocos/datasets", e.Name()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		n := 0
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			n++
		}
		f.Close()
		fmt.Fprintf(&b, "%s %d\n", e.Name(), n-1)
	}
	fmt.Print(b.String())
	if err := os.WriteFile("results/count.txt", []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "writing result:", err)
		os.Exit(1)
	}
	// Writing into datasets must fail: they are read-only.
	if err := os.WriteFile("/cocos/datasets/x", []byte("x"), 0o644); err == nil {
		fmt.Println("ESCAPED wrote into datasets")
		os.Exit(3)
	}
}
