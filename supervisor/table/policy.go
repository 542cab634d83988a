package table

import (
	"fmt"
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
		return fmt.Errorf("table: policy max_restarts %d: want ≥ 1", p.MaxRestarts)
	case p.Window <= 0:
		return fmt.Errorf("table: policy window %v: want > 0", p.Window)
	case p.Base <= 0 || p.Cap < p.Base:
		return fmt.Errorf("table: policy base %v cap %v: want 0 < base ≤ cap", p.Base, p.Cap)
	case !(p.Jitter >= 0 && p.Jitter <= 1): // NaN too: the canonical JSON could not encode it
		return fmt.Errorf("table: policy jitter %v: want 0–1", p.Jitter)
	}
	return nil
}
