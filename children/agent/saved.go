package agent

// SavedComputation is the computation an agent started on stateDir (its
// own state directory) resumes, as New reads it from the agent's record:
// its id and state, or "" and Idle when there is none. The supervisor
// asks it before any child runs, to decide whether a saved pull grant is
// still the grant of a computation under way.
func SavedComputation(stateDir string) (id string, st State, err error) {
	rec, req, err := loadRecord(stateDir)
	if err != nil {
		return "", "", err
	}
	if req == nil {
		return "", Idle, nil
	}
	return req.GetId(), rec.State, nil
}

// UnderWay reports whether a computation in s has started and not ended:
// from its manifest's acceptance until its results are consumed or it
// fails (Complete, Failed, and an agent waiting for a manifest have none).
func (s State) UnderWay() bool {
	switch s {
	case ReceivingAlgorithm, ReceivingData, Running, ConsumingResults:
		return true
	}
	return false
}
