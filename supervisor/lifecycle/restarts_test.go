package lifecycle

import (
	"testing"
	"time"

	"github.com/cvmd/cvmd/supervisor/table"
)

func TestRestartPolicy(t *testing.T) {
	p := table.Policy{MaxRestarts: 5, Window: 10 * time.Second, Base: 100 * time.Millisecond, Cap: 400 * time.Millisecond, Jitter: 0}
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name   string
		exits  []time.Duration // offsets of exits from t0
		stable []int           // Stable() before exit i
		want   []time.Duration // delays; -1 = failed
	}{
		{name: "first restart is immediate, then back-off doubles up to the cap",
			exits: []time.Duration{0, 1, 2, 3, 4},
			want:  []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}},
		{name: "more than 5 restarts in the window fail the child",
			exits: []time.Duration{0, 1, 2, 3, 4, 5},
			want:  []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond, -1}},
		{name: "restarts outside the window are forgotten",
			exits: []time.Duration{0, 1, 2, 3, 4, 11000},
			want:  []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}},
		{name: "a stable run resets the back-off",
			exits: []time.Duration{0, 1, 2}, stable: []int{2},
			want: []time.Duration{0, 100 * time.Millisecond, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Restarts{Policy: p}
			for i, off := range tc.exits {
				for _, s := range tc.stable {
					if s == i {
						r.Stable()
					}
				}
				d, failed := r.Next(t0.Add(off * time.Millisecond))
				if tc.want[i] == -1 {
					if !failed {
						t.Fatalf("exit %d: not failed", i)
					}
					continue
				}
				if failed || d != tc.want[i] {
					t.Fatalf("exit %d: delay %v failed %v, want %v", i, d, failed, tc.want[i])
				}
			}
		})
	}
}

func TestRestartJitterBounded(t *testing.T) {
	p := table.DefaultPolicy()
	for _, rnd := range []float64{0, 0.5, 0.999} {
		r := Restarts{Policy: p, Rand: func() float64 { return rnd }}
		now := time.Unix(0, 0)
		r.Next(now)
		d, _ := r.Next(now)
		lo, hi := time.Duration(float64(p.Base)*(1-p.Jitter)), time.Duration(float64(p.Base)*(1+p.Jitter))
		if d < lo || d > hi {
			t.Errorf("rand %v: delay %v outside [%v, %v]", rnd, d, lo, hi)
		}
	}
}

func TestRestartReset(t *testing.T) {
	r := Restarts{Policy: table.DefaultPolicy()}
	now := time.Unix(0, 0)
	for i := 0; i < 5; i++ {
		r.Next(now)
	}
	if _, failed := r.Next(now); !failed {
		t.Fatal("6th restart in the window not failed")
	}
	r.Reset()
	if d, failed := r.Next(now); failed || d != 0 {
		t.Fatalf("after Reset: %v %v, want an immediate restart", d, failed)
	}
}
