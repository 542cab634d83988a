// Command add is the `bin` sample algorithm: it adds --a and --b, prints
// the sum and writes it to /cocos/results/result.txt. With --stamp it first
// prints the wall clock (ns) at which it started, for the start-latency bench.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	start := time.Now().UnixNano()
	a := flag.Float64("a", 5, "first addend")
	b := flag.Float64("b", 10, "second addend")
	out := flag.String("out", "/cocos/results/result.txt", "where to write the sum")
	stamp := flag.Bool("stamp", false, "print the start time")
	flag.Parse()
	if *stamp {
		fmt.Printf("STARTED %d\n", start)
	}
	sum := *a + *b
	fmt.Printf("sum %g\n", sum)
	fmt.Fprintf(os.Stderr, "adding %g and %g\n", *a, *b)
	if err := os.WriteFile(*out, []byte(fmt.Sprintf("%g\n", sum)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "writing result:", err)
		os.Exit(1)
	}
}
