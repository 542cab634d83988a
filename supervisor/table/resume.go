package table

import (
	"path/filepath"

	"github.com/cvmd/cvmd/children/agent"
)

// ResumedComputation is the computation the child with RoleComputations
// resumes when it starts on state (--state): its id, and whether it is
// under way (accepted, its results not yet consumed, not failed), from the
// record in that child's own state directory. "" and false when there is
// none.
func (t *Table) ResumedComputation(state string) (id string, underWay bool, err error) {
	spec := t.Child(t.WithRole(RoleComputations))
	if spec == nil {
		return "", false, nil
	}
	for _, d := range spec.StateDirs {
		if d.Writable {
			id, st, err := agent.SavedComputation(filepath.Join(state, d.Dir))
			return id, st.UnderWay(), err
		}
	}
	return "", false, nil
}

// UnderWay reports whether state, as the computations child names it in
// agentctl.StateResponse, is a computation under way.
func UnderWay(state string) bool { return agent.State(state).UnderWay() }
