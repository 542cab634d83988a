package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/proto/cvms"
)

// State is a computation state, named as Cocos names it on the wire.
type State string

// The states of §2.1 of the Cocos reference.
const (
	Idle               State = "Idle"
	ReceivingManifest  State = "ReceivingManifest"
	ReceivingAlgorithm State = "ReceivingAlgorithm"
	ReceivingData      State = "ReceivingData"
	Running            State = "Running"
	ConsumingResults   State = "ConsumingResults"
	Complete           State = "Complete"
	Failed             State = "Failed"
)

// Event is what moves the machine.
type Event string

// Cocos's events.
const (
	EvStart             Event = "Start"
	EvManifestReceived  Event = "ManifestReceived"
	EvAlgorithmReceived Event = "AlgorithmReceived"
	EvDataReceived      Event = "DataReceived"
	EvRunComplete       Event = "RunComplete"
	EvResultsConsumed   Event = "ResultsConsumed"
	EvRunFailed         Event = "RunFailed"
)

// Event statuses, as Cocos sends them in AgentEvent.status.
const (
	StatusInProgress = "InProgress"
	StatusReady      = "Ready"
	StatusCompleted  = "Completed"
	StatusStarting   = "Starting"
	StatusFailed     = "Failed"
	StatusStopped    = "Stopped"
	// StatusWarning marks an event about something the agent changed or
	// refused without failing the computation.
	StatusWarning = "Warning"
)

// EventResultsRenamed is the event type (not a state) of a Warning saying
// which result files were renamed in results.zip, and to what.
const EventResultsRenamed = "ResultsRenamed"

// next returns where ev leads from s, and whether that transition exists.
// hasData tells the two AlgorithmReceived edges apart.
func next(s State, ev Event, hasData bool) (State, bool) {
	switch {
	case s == Idle && ev == EvStart:
		return ReceivingManifest, true
	case s == ReceivingManifest && ev == EvManifestReceived:
		return ReceivingAlgorithm, true
	case s == ReceivingAlgorithm && ev == EvAlgorithmReceived:
		if hasData {
			return ReceivingData, true
		}
		return Running, true
	case s == ReceivingData && ev == EvDataReceived:
		return Running, true
	case (s == ReceivingAlgorithm || s == ReceivingData || s == Running) && ev == EvRunFailed:
		return Failed, true
	case s == Running && ev == EvRunComplete:
		return ConsumingResults, true
	case s == ConsumingResults && ev == EvResultsConsumed:
		return Complete, true
	}
	return s, false
}

// entryEvents are the (event_type, status) pairs published on entering a
// state, before any work the state does.
func entryEvents(s State) [][2]string {
	switch s {
	case ReceivingAlgorithm, ReceivingData:
		return [][2]string{{string(s), StatusInProgress}}
	case Running:
		return [][2]string{{string(s), StatusStarting}, {string(s), StatusInProgress}}
	case ConsumingResults:
		return [][2]string{{string(s), StatusReady}}
	case Complete:
		return [][2]string{{string(s), StatusCompleted}}
	case Failed:
		return [][2]string{{string(s), StatusFailed}}
	}
	return nil
}

// record is what the agent persists in its state dir after every change, so
// that a restarted agent resumes where it was.
type record struct {
	State         State    `json:"state"`
	Manifest      []byte   `json:"manifest,omitempty"` // cvms.ComputationRunReq, binary proto
	AlgoType      string   `json:"algo_type,omitempty"`
	AlgoArgs      []string `json:"algo_args,omitempty"`
	PythonRuntime string   `json:"python_runtime,omitempty"`
	Requirements  bool     `json:"requirements,omitempty"`
	Received      []string `json:"received,omitempty"`     // dataset names installed
	ReceivedIdx   []int    `json:"received_idx,omitempty"` // manifest indexes of the datasets accepted
	Entries       []string `json:"entries,omitempty"`      // top-level names they put in datasets/
	RunError      string   `json:"run_error,omitempty"`
}

const stateFile = "agent-state.json"

// fillReceivedIdx derives the indexes of a record written before they were
// kept (every dataset then had a unique filename).
func (r *record) fillReceivedIdx(names []string) {
	if len(r.ReceivedIdx) > 0 || len(r.Received) == 0 {
		return
	}
	for _, n := range r.Received {
		for i, m := range names {
			if m == n {
				r.ReceivedIdx = append(r.ReceivedIdx, i)
			}
		}
	}
}

func loadRecord(dir string) (*record, *cvms.ComputationRunReq, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if os.IsNotExist(err) {
		return &record{State: Idle}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading agent state: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, nil, fmt.Errorf("decoding agent state %s: %w", stateFile, err)
	}
	if len(r.Manifest) == 0 {
		return &record{State: Idle}, nil, nil
	}
	m := &cvms.ComputationRunReq{}
	if err := proto.Unmarshal(r.Manifest, m); err != nil {
		return nil, nil, fmt.Errorf("decoding the saved manifest: %w", err)
	}
	return &r, m, nil
}

// save writes r atomically: a crash leaves either the old or the new state.
func (r *record) save(dir string) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := child.WriteFileAtomic(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		return fmt.Errorf("saving agent state: %w", err)
	}
	return nil
}
