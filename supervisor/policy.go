package supervisor

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy is the restart policy of every child: the first restart is at
// once, later ones wait Base·2^(n-1) (capped at Cap) with ±Jitter; more than
// MaxRestarts restarts within Window mark the child failed.
type Policy struct {
	MaxRestarts int           `json:"max_restarts"`
	Window      time.Duration `json:"window"`
	Base        time.Duration `json:"base"`
	Cap         time.Duration `json:"cap"`
	// Jitter is the fraction of the delay added or removed at random (0–1).
	Jitter float64 `json:"jitter"`
}

// DefaultPolicy is 5 restarts in 10 s, back-off from 100 ms to 5 s, ±20 %.
func DefaultPolicy() Policy {
	return Policy{MaxRestarts: 5, Window: 10 * time.Second, Base: 100 * time.Millisecond, Cap: 5 * time.Second, Jitter: 0.2}
}

// Validate names the first bad field.
func (p Policy) Validate() error {
	switch {
	case p.MaxRestarts < 1:
		return fmt.Errorf("supervisor: policy max_restarts %d: want ≥ 1", p.MaxRestarts)
	case p.Window <= 0:
		return fmt.Errorf("supervisor: policy window %v: want > 0", p.Window)
	case p.Base <= 0 || p.Cap < p.Base:
		return fmt.Errorf("supervisor: policy base %v cap %v: want 0 < base ≤ cap", p.Base, p.Cap)
	case p.Jitter < 0 || p.Jitter > 1:
		return fmt.Errorf("supervisor: policy jitter %v: want 0–1", p.Jitter)
	}
	return nil
}

// Restarts tracks one child's restarts under a Policy. Its zero value with
// a Policy set is ready to use. Not safe for concurrent use (the event loop
// owns it).
type Restarts struct {
	Policy Policy
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
