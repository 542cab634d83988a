package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/cvmd/cvmd/attest"
	"github.com/cvmd/cvmd/supervisor/pid1"
)

// The storage of the state directory (supervisor/pid1/scratch.go: the
// encrypted scratch disk, or memory): measured into PCR 15 and announced
// before any child starts, the limits that depend on its size, and the
// kernel's reports of blocks that failed their authentication tag.

// MeasureStorage is the Hooks.Measure kind of the storage fact: data is the
// attest.Storage JSON.
const MeasureStorage = "storage"

// storage describes the state directory's storage.
func (s *Supervisor) storage() attest.Storage { return pid1.StorageOf(s.cfg.State) }

// budget shares out the state directory's space: the log queue bound, the
// results cap (--algo-results-cap, when set, wins) and the agent's floor.
func (s *Supervisor) budget() pid1.Budget {
	return pid1.BudgetFor(s.storage(), s.cfg.AlgoLimits.ResultsBytes)
}

// startStorage measures and announces the storage, and watches for blocks
// of the scratch disk that fail their tag until ctx ends. Run calls it
// after measuring the table, before the first child starts.
func (s *Supervisor) startStorage(ctx context.Context) {
	st := s.storage()
	b := pid1.BudgetFor(st, s.cfg.AlgoLimits.ResultsBytes)
	if m := s.cfg.Hooks.Measure; m != nil {
		data, _ := json.Marshal(st)
		m(ctx, MeasureStorage, data)
	}
	s.log.Info("storage", "kind", st.Kind, "fs", st.FS, "size_mib", st.SizeBytes>>20, "disk", st.Disk, "cipher", st.Cipher,
		"integrity", st.Integrity, "reason", st.Reason, "log_queue_mib", b.LogQueueBytes>>20,
		"results_cap_mib", b.ResultsBytes>>20, "agent_min_free_mib", b.AgentMinFreeBytes>>20, "results_on_disk", b.ResultsOnDisk)
	s.Events().Event("storage.ready", "ok", "kind", st.Kind, "fs", st.FS, "size_bytes", st.SizeBytes, "disk", st.Disk,
		"disk_bytes", st.DiskBytes, "cipher", st.Cipher, "integrity", st.Integrity, "journal", st.Journal, "reason", st.Reason,
		"log_queue_bytes", b.LogQueueBytes, "results_cap_bytes", b.ResultsBytes, "agent_min_free_bytes", b.AgentMinFreeBytes)
	if st.Kind != attest.StorageDisk {
		return
	}
	err := pid1.WatchIntegrity(ctx, func(e pid1.IntegrityError, n int) {
		s.log.Error("scratch disk: a block failed its authentication tag: the host changed it; the read failed",
			"device", e.Device, "sector", e.Sector, "errors", n)
		s.Events().Event("storage.integrity_error", "error", "device", e.Device, "sector", e.Sector, "errors", n,
			"detail", "a block of the scratch disk failed its authentication tag (changed or replaced by the host); the read returned an I/O error")
	})
	if err != nil {
		s.log.Warn("not watching the scratch disk's integrity errors", "err", err)
	}
}

// storageEvent builds the PCR 15 event of a MeasureStorage measurement.
func storageEvent(data []byte) (attest.Event, error) {
	var st attest.Storage
	if err := json.Unmarshal(data, &st); err != nil {
		return attest.Event{}, fmt.Errorf("storage measurement: %w", err)
	}
	return attest.JSONEvent(attest.EventStorage, st)
}

// resultsDiskDir is where the algorithm sandboxes' results go when they
// are on the scratch disk ("" when they are a tmpfs in memory).
func (s *Supervisor) resultsDiskDir() string {
	if !s.budget().ResultsOnDisk {
		return ""
	}
	return filepath.Join(s.cfg.State, "algorithm-results")
}
