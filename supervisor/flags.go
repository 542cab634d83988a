package supervisor

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeFlag is a byte count flag: a number with an optional suffix K, M, G
// (powers of 1000) or KiB, MiB, GiB (powers of 1024); 0 means the default.
type sizeFlag struct{ p *int64 }

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1}}

func (f sizeFlag) String() string {
	if f.p == nil {
		return "0"
	}
	return strconv.FormatInt(*f.p, 10)
}

func (f sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*f.p = n
	return nil
}

func parseSize(v string) (int64, error) {
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want a non-negative number of bytes, optionally with K, M, G, KiB, MiB or GiB", v)
	}
	return n * mult, nil
}

// cpuFlag is a CPU count (fractions allowed) stored in milli-CPUs.
type cpuFlag struct{ p *int64 }

func (f cpuFlag) String() string {
	if f.p == nil || *f.p == 0 {
		return "0"
	}
	return strconv.FormatFloat(float64(*f.p)/1000, 'f', -1, 64)
}

func (f cpuFlag) Set(v string) error {
	c, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || c < 0 || c > 1e6 || math.IsNaN(c) {
		return fmt.Errorf("cpu %q: want a number of CPUs such as 0.5 or 2", v)
	}
	m := int64(math.Round(c * 1000))
	if c > 0 && m == 0 {
		return fmt.Errorf("cpu %q: below one milli-CPU", v)
	}
	*f.p = m
	return nil
}
