package table

import (
	"testing"

	"github.com/cvmd/cvmd/proto/config"
)

// The storage's budget (pid1.BudgetFor) reaches the agent's floor and the
// log queue's bound; zero leaves the children's defaults.
func TestSettingsCarryTheStorageBudget(t *testing.T) {
	for _, in := range []SettingsInput{{}, {LogQueueBytes: 256 << 20, AgentMinFreeBytes: 1110 << 20}} {
		a, err := agentSettings(&in)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.(*config.AgentSettings).GetMinFreeBytes(); got != uint64(in.AgentMinFreeBytes) {
			t.Errorf("agent min_free_bytes %d, want %d", got, in.AgentMinFreeBytes)
		}
		l, err := logfwdSettings(&in)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.(*config.LogfwdSettings).GetMaxBytes(); got != uint64(in.LogQueueBytes) {
			t.Errorf("logfwd max_bytes %d, want %d", got, in.LogQueueBytes)
		}
	}
}
