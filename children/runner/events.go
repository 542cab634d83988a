package runner

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cvmd/cvmd/proto/cvms"
	"github.com/cvmd/cvmd/proto/logs"
)

// Originator is the originator of the runner's events, as in Cocos.
const Originator = "computation-runner"

// recordPutter is what *logsink.Sink offers for raw records.
type recordPutter interface {
	Put(*logs.Record) bool
}

// sinkEvents publishes events with Cocos's originator (the sink would stamp
// the child's name) and the run's computation id.
type sinkEvents struct{ sink recordPutter }

func (e sinkEvents) Event(eventType, status string, details ...any) bool {
	ev := &cvms.AgentEvent{EventType: eventType, Status: status, Originator: Originator, Timestamp: timestamppb.Now()}
	m := map[string]any{}
	for i := 0; i+1 < len(details); i += 2 {
		k := fmt.Sprint(details[i])
		if k == "computation_id" {
			ev.ComputationId = fmt.Sprint(details[i+1])
			continue
		}
		m[k] = details[i+1]
	}
	if len(m) > 0 {
		ev.Details, _ = json.Marshal(m)
	}
	return e.sink.Put(&logs.Record{Body: &logs.Record_Event{Event: ev}})
}
