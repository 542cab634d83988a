// Command guest is a WASI test module: "write <dir>/<name>" writes a file,
// "exit <n>" exits with n, "args ..." prints its arguments, "pwd" prints the
// working directory.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	switch os.Args[1] {
	case "write":
		if err := os.WriteFile(os.Args[2], []byte("hello"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(4)
		}
	case "exit":
		n, _ := strconv.Atoi(os.Args[2])
		os.Exit(n)
	case "args":
		fmt.Println(os.Args[2:])
	case "pwd":
		d, _ := os.Getwd()
		fmt.Println(d)
	}
}
