// Command algo is the sample `bin` algorithm of `make run`: a nearest-centroid
// classifier of the iris dataset on petal length and width. It reads the one
// file in datasets/ (Cocos's layout: the working directory is /cocos), trains
// on two thirds of each species, tests on the rest, and writes
// results/result.json and results/result.txt. It needs nothing but the Go
// standard library, so it runs offline in an empty sandbox root.
package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

type sample struct {
	x       [2]float64
	species string
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "algo:", err)
		os.Exit(1)
	}
}

func run() error {
	ents, err := os.ReadDir("datasets")
	if err != nil {
		return fmt.Errorf("listing datasets: %w", err)
	}
	if len(ents) != 1 {
		return fmt.Errorf("want exactly one file in datasets/, found %d", len(ents))
	}
	files := []string{filepath.Join("datasets", ents[0].Name())}
	f, err := os.Open(files[0])
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return fmt.Errorf("reading %s: %w", files[0], err)
	}
	if len(rows) < 2 {
		return fmt.Errorf("%s has no data rows", files[0])
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	pl, okL := col["PetalLengthCm"]
	pw, okW := col["PetalWidthCm"]
	sp, okS := col["Species"]
	if !okL || !okW || !okS {
		return fmt.Errorf("header %v lacks PetalLengthCm, PetalWidthCm or Species", rows[0])
	}
	bySpecies := map[string][]sample{}
	for i, r := range rows[1:] {
		a, err1 := strconv.ParseFloat(r[pl], 64)
		b, err2 := strconv.ParseFloat(r[pw], 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("row %d: bad number", i+2)
		}
		bySpecies[r[sp]] = append(bySpecies[r[sp]], sample{[2]float64{a, b}, r[sp]})
	}
	var names []string
	for n := range bySpecies {
		names = append(names, n)
	}
	sort.Strings(names)
	centroid := map[string][2]float64{}
	var test []sample
	for _, n := range names {
		s := bySpecies[n]
		cut := len(s) * 2 / 3
		var c [2]float64
		for _, v := range s[:cut] {
			c[0] += v.x[0] / float64(cut)
			c[1] += v.x[1] / float64(cut)
		}
		centroid[n] = c
		test = append(test, s[cut:]...)
	}
	correct := 0
	for _, v := range test {
		best, bestD := "", math.Inf(1)
		for _, n := range names {
			c := centroid[n]
			if d := math.Hypot(v.x[0]-c[0], v.x[1]-c[1]); d < bestD {
				best, bestD = n, d
			}
		}
		if best == v.species {
			correct++
		}
	}
	acc := float64(correct) / float64(len(test))
	fmt.Printf("trained on %d rows, tested on %d: accuracy %.3f\n", len(rows)-1-len(test), len(test), acc)
	out := map[string]any{"model": "nearest-centroid(petal length, petal width)", "centroids": centroid,
		"test_rows": len(test), "accuracy": acc}
	if err := os.MkdirAll("results", 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	if err := os.WriteFile("results/result.json", append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile("results/result.txt", []byte(fmt.Sprintf("accuracy %.3f on %d test rows\n", acc, len(test))), 0o644)
}
