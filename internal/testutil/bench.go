package testutil

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

// BenchEnv is the variable that turns benchmarks on (`make bench` sets it).
const BenchEnv = "CVMD_BENCH"

// BenchOn skips t unless CVMD_BENCH=1: benchmarks are tests named TestBench*
// that only `make bench` runs.
func BenchOn(t testing.TB) {
	t.Helper()
	if !Benchmarking() {
		t.Skip(BenchEnv + "=1 runs benchmarks")
	}
}

// Benchmarking reports whether CVMD_BENCH=1, for a test that also measures
// when it runs as a benchmark.
func Benchmarking() bool { return os.Getenv(BenchEnv) == "1" }

// Bench prints one `make bench` figure: the line `BENCH <name> <value>
// <unit>`, then note (what was measured, the reference) if any. The value has
// two decimals below 10, one up to 10^6, and none when it is whole.
func Bench(name string, value float64, unit string, note ...string) {
	fmt.Println(BenchLine(name, value, unit, note...))
}

// BenchLine is the line Bench prints, without its newline.
func BenchLine(name string, value float64, unit string, note ...string) string {
	var v string
	switch a := math.Abs(value); {
	case value == math.Trunc(value) && a < 1e15:
		v = strconv.FormatFloat(value, 'f', 0, 64)
	case a < 10:
		v = strconv.FormatFloat(value, 'f', 2, 64)
	default:
		v = strconv.FormatFloat(value, 'f', 1, 64)
	}
	line := "BENCH " + name + " " + v + " " + unit
	if n := strings.Join(note, " "); n != "" {
		line += " (" + n + ")"
	}
	return line
}
