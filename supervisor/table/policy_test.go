package table

import (
	"testing"
	"time"
)

func TestPolicyValidate(t *testing.T) {
	for _, p := range []Policy{
		{MaxRestarts: 0, Window: time.Second, Base: 1, Cap: 1},
		{MaxRestarts: 1, Window: 0, Base: 1, Cap: 1},
		{MaxRestarts: 1, Window: time.Second, Base: 2, Cap: 1},
		{MaxRestarts: 1, Window: time.Second, Base: 1, Cap: 1, Jitter: 2},
	} {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := DefaultPolicy().Validate(); err != nil {
		t.Error(err)
	}
}
