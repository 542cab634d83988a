package lifecycle

import (
	"math/rand/v2"
	"time"

	"github.com/cvmd/cvmd/supervisor/table"
)

// Restarts tracks one child's restarts under a Policy. Its zero value with
// a Policy set is ready to use. Not safe for concurrent use (the event loop
// owns it).
type Restarts struct {
	Policy table.Policy
	// Rand returns a float in [0,1); nil means math/rand/v2.
	Rand func() float64

	times  []time.Time // restarts within the window
	streak int         // consecutive restarts without a stable run
	total  int
}

// Next is called when the child exited at now. It returns how long to wait
// before restarting it, or failed=true when the child restarted more than
// MaxRestarts times within Window and must not be restarted.
func (r *Restarts) Next(now time.Time) (delay time.Duration, failed bool) {
	cut := now.Add(-r.Policy.Window)
	kept := r.times[:0]
	for _, t := range r.times {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	r.times = kept
	if len(r.times) >= r.Policy.MaxRestarts {
		return 0, true
	}
	r.times = append(r.times, now)
	r.total++
	r.streak++
	if r.streak == 1 {
		return 0, false
	}
	d := r.Policy.Base << (r.streak - 2)
	if d > r.Policy.Cap || d <= 0 {
		d = r.Policy.Cap
	}
	if r.Policy.Jitter > 0 {
		rnd := rand.Float64
		if r.Rand != nil {
			rnd = r.Rand
		}
		d += time.Duration((rnd()*2 - 1) * r.Policy.Jitter * float64(d))
	}
	return d, false
}

// Stable is called when the child has been ready for a while: the back-off
// starts again from "at once".
func (r *Restarts) Stable() { r.streak = 0 }

// Total is how many restarts were granted since the last Reset.
func (r *Restarts) Total() int { return r.total }

// Reset forgets everything (a new computation starts).
func (r *Restarts) Reset() { r.times, r.streak, r.total = nil, 0, 0 }
