package supervisor

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"

	"github.com/cvmd/cvmd/supervisor/algosandbox"
	"github.com/cvmd/cvmd/supervisor/lifecycle"
	"github.com/cvmd/cvmd/supervisor/measure"
	"github.com/cvmd/cvmd/supervisor/pid1"
)

// The storage of the state directory (supervisor/pid1/scratch.go: the
// encrypted scratch disk, or memory): measured into PCR 15 right after the
// table, announced to the manager, the limits that follow its size, and
// the kernel's reports of blocks that failed their authentication tag.

// stateStorage is what runProper needs of the state directory's storage.
type stateStorage struct {
	fact   pid1.Storage
	budget pid1.Budget
}

// storageOf describes state's storage and shares out its space (an
// explicit --algo-results-cap wins).
func storageOf(state string, resultsCap int64) stateStorage {
	st := pid1.StorageOf(state)
	return stateStorage{fact: st, budget: pid1.BudgetFor(st, resultsCap)}
}

// results is how the algorithm sandboxes make their results directories:
// on the scratch disk, in <state>/algorithm-results (emptied now), each
// capped by a project quota; nil when they are a tmpfs in memory.
func (s stateStorage) results(state string) (func(name string, id uint64, limit int64, uid, gid int) (string, func(), error), error) {
	if !s.budget.ResultsOnDisk {
		return nil, nil
	}
	area, err := pid1.NewResultsArea(filepath.Join(state, "algorithm-results"))
	if err != nil {
		return nil, err
	}
	return func(name string, id uint64, limit int64, uid, gid int) (string, func(), error) {
		return area.Make(name, id, limit, algosandbox.ResultsFiles(limit), uid, gid)
	}, nil
}

// measurer measures the storage right after the table: before any child
// starts, in the same boot's log.
func (s stateStorage) measurer(m *measure.Measurer) lifecycle.Measurer {
	return storageMeasurer{Measurer: m, fact: s.fact}
}

type storageMeasurer struct {
	*measure.Measurer
	fact pid1.Storage
}

func (m storageMeasurer) Table(ctx context.Context, canonical []byte) {
	m.Measurer.Table(ctx, canonical)
	b, _ := json.Marshal(m.fact)
	m.Measurer.Storage(ctx, b)
}

// publisher is the supervisor's event publisher (lifecycle.Supervisor.Events).
type publisher interface {
	Event(eventType, status string, details ...any) bool
}

// announce logs the storage and its limits, sends the storage.ready event,
// and on the scratch disk turns the kernel's tag failures into
// storage.integrity_error events until ctx ends.
func (s stateStorage) announce(ctx context.Context, events publisher, log *slog.Logger) {
	st, b := s.fact, s.budget
	log.Info("storage", "kind", st.Kind, "fs", st.FS, "size_mib", st.SizeBytes>>20, "disk", st.Disk, "cipher", st.Cipher,
		"integrity", st.Integrity, "reason", st.Reason, "log_queue_mib", b.LogQueueBytes>>20,
		"results_cap_mib", b.ResultsBytes>>20, "agent_min_free_mib", b.AgentMinFreeBytes>>20, "results_on_disk", b.ResultsOnDisk)
	events.Event("storage.ready", "ok", "kind", st.Kind, "fs", st.FS, "size_bytes", st.SizeBytes, "disk", st.Disk,
		"disk_bytes", st.DiskBytes, "cipher", st.Cipher, "integrity", st.Integrity, "journal", st.Journal, "reason", st.Reason,
		"log_queue_bytes", b.LogQueueBytes, "results_cap_bytes", b.ResultsBytes, "agent_min_free_bytes", b.AgentMinFreeBytes)
	if st.Kind != pid1.StorageDisk {
		return
	}
	err := pid1.WatchIntegrity(ctx, func(e pid1.IntegrityError, n int) {
		log.Error("scratch disk: a block failed its authentication tag: the host changed it; the read failed",
			"device", e.Device, "sector", e.Sector, "errors", n)
		events.Event("storage.integrity_error", "error", "device", e.Device, "sector", e.Sector, "errors", n,
			"detail", "a block of the scratch disk failed its authentication tag (changed or replaced by the host); the read returned an I/O error")
	})
	if err != nil {
		log.Warn("not watching the scratch disk's integrity errors", "err", err)
	}
}
