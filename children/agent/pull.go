package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/pull"
)

// Pull mode: a manifest entry whose source has a URL is fetched by the
// agent (through the egress child) as the entry action of its state —
// ReceivingAlgorithm for the algorithm, ReceivingData for every pulled
// dataset — instead of waiting for an upload. Fetches run one at a time in
// one goroutine per state entry; a failure fails the computation with an
// event naming the resource and the class of failure; a restarted agent
// starts them again and the fetcher resumes what was half-fetched.

// Event types of pull mode (originator "agent"), beside Cocos's state events.
const (
	EventFetchStarted = "ResourceFetchStarted" // status InProgress
	EventFetched      = "ResourceFetched"      // status Completed
	EventFetchFailed  = "ResourceFetchFailed"  // status Failed, then Failed/Failed
)

// datasetNames returns each dataset's name in the datasets dir: its
// filename, or, for a pulled dataset without one, the name its source
// suggests; "" for an unnamed dataset that will be uploaded (matched by
// hash). It refuses invalid and repeated names.
func datasetNames(man *manifest.Computation) ([]string, error) {
	names := make([]string, len(man.Datasets))
	seen := map[string]int{}
	for i, d := range man.Datasets {
		n := d.Filename
		if d.Source.Pulled() {
			loc, err := pull.Parse(d.Source.Type, d.Source.URL)
			if err != nil {
				return nil, fmt.Errorf("dataset %s source: %v", d.Label(i), err)
			}
			if n == "" {
				if loc.Kind == pull.KindOCI {
					continue // what the image holds names it; see installFetched
				}
				if n = loc.Name(); n == "" {
					return nil, fmt.Errorf("dataset %d has no filename and its source %q suggests none", i, d.Source.URL)
				}
			}
			if err := manifest.ValidFilename(n); err != nil {
				return nil, fmt.Errorf("dataset %d named from its source: %v", i, err)
			}
		}
		if n == "" {
			continue
		}
		if j, dup := seen[n]; dup {
			return nil, fmt.Errorf("datasets %d and %d would both be %q", j, i, n)
		}
		seen[n] = i
		names[i] = n
	}
	return names, nil
}

// checkPull validates the manifest's remote sources at Start.
func (a *Agent) checkPull(man *manifest.Computation) error {
	any := man.Algorithm.Source.Pulled()
	if any {
		if _, err := pull.Parse(man.Algorithm.Source.Type, man.Algorithm.Source.URL); err != nil {
			return fmt.Errorf("algorithm source: %v", err)
		}
	}
	any = any || encryptedUpload(man.Algorithm.Source, man.Algorithm.KBS)
	for _, d := range man.Datasets {
		any = any || d.Source.Pulled() || encryptedUpload(d.Source, d.KBS)
	}
	if _, err := datasetNames(man); err != nil {
		return err
	}
	if any && a.fetcher == nil {
		return errors.New("the manifest has remote sources or encrypted uploads, but this agent has no way out (no egress edge)")
	}
	return nil
}

// startPullsLocked starts fetching what the current state waits for, if
// anything is pulled. Preconditions: a.mu held.
func (a *Agent) startPullsLocked() {
	if a.closed || a.pullCancel != nil || a.man == nil || a.fetcher == nil {
		return
	}
	var todo []pull.Resource
	switch a.rec.State {
	case ReceivingAlgorithm:
		if al := a.man.Algorithm; al.Source.Pulled() {
			todo = append(todo, pull.Resource{What: "algorithm", Source: *al.Source, KBS: al.KBS, Hash: al.Hash, Role: pull.RoleAlgorithm, AlgoType: al.AlgoType})
		}
	case ReceivingData:
		for i, d := range a.man.Datasets {
			if d.Source.Pulled() && !slices.Contains(a.rec.ReceivedIdx, i) {
				todo = append(todo, pull.Resource{What: "dataset " + d.Label(i), Source: *d.Source, KBS: d.KBS, Hash: d.Hash, Role: pull.RoleDataset})
			}
		}
	}
	if len(todo) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.pullCancel = cancel
	man, state := a.man, a.rec.State
	a.pulls.Go(func() {
		defer cancel()
		a.runPulls(ctx, man, state, todo)
		a.mu.Lock()
		if a.man == man && a.rec.State == state || a.man != man {
			a.pullCancel = nil
		}
		a.mu.Unlock()
	})
}

// stopPulls cancels the fetches in flight and waits for them.
func (a *Agent) stopPulls() {
	a.mu.Lock()
	if a.pullCancel != nil {
		a.pullCancel()
	}
	a.mu.Unlock()
	a.pulls.Wait()
	a.mu.Lock()
	a.pullCancel = nil
	a.mu.Unlock()
}

func (a *Agent) runPulls(ctx context.Context, man *manifest.Computation, state State, todo []pull.Resource) {
	for _, r := range todo {
		a.events.Publish(man.ID, EventFetchStarted, StatusInProgress, "resource", r.What, "source", r.Source.URL)
		a.log.Info("fetching", "resource", r.What, "source", r.Source.URL, "encrypted", r.Source.Encrypted)
		res, err := a.fetcher.Fetch(ctx, r)
		if ctx.Err() != nil {
			return // stopped, or the agent is closing: a new agent resumes
		}
		if err == nil {
			err = a.installFetched(man, state, r, res)
		}
		if err != nil {
			a.failFetch(man, state, r, err)
			return
		}
	}
}

// installFetched moves a verified resource into the computation dir and
// records it, as an upload would be.
func (a *Agent) installFetched(man *manifest.Computation, state State, r pull.Resource, res *pull.Result) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.man != man || a.rec.State != state {
		os.RemoveAll(res.Path)
		return nil // stopped meanwhile
	}
	details := []string{"resource", r.What, "source", res.Origin, "bytes", strconv.FormatInt(res.Size, 10),
		"downloaded", strconv.FormatInt(res.Downloaded, 10), "sha3_256", hex.EncodeToString(r.Hash[:]),
		"encrypted", strconv.FormatBool(res.Encrypted), "resumed_at", strconv.FormatInt(res.ResumedAt, 10)}
	if r.Role == pull.RoleAlgorithm {
		if res.Requirements != "" {
			os.Chmod(res.Requirements, 0o644)
			if err := os.Rename(res.Requirements, a.dirs.requirements); err != nil {
				return fmt.Errorf("saving requirements: %w", err)
			}
		}
		if err := os.Chmod(res.Path, 0o755); err != nil {
			return err
		}
		if err := os.Rename(res.Path, a.dirs.algo); err != nil {
			return fmt.Errorf("saving the algorithm: %w", err)
		}
		a.rec.AlgoType = orDefault(man.Algorithm.AlgoType, "bin")
		a.rec.AlgoArgs = man.Algorithm.AlgoArgs
		a.rec.Requirements = res.Requirements != ""
		a.log.Info("algorithm fetched", "source", res.Origin, "bytes", res.Size, "algo_type", a.rec.AlgoType)
		a.events.Publish(man.ID, EventFetched, StatusCompleted, details...)
		a.cleanupStaging()
		a.pullCancel = nil // this fetch is done; ReceivingData may start its own
		return a.transitionLocked(EvAlgorithmReceived)
	}
	i := slices.IndexFunc(man.Datasets, func(d manifest.Dataset) bool {
		return d.Source.Pulled() && *d.Source == r.Source && d.Hash == r.Hash
	})
	if i < 0 || slices.Contains(a.rec.ReceivedIdx, i) {
		os.RemoveAll(res.Path)
		return nil
	}
	name := a.names[i]
	if name == "" {
		name = res.Name // an image's file, or the zip of its files
		if err := manifest.ValidFilename(name); err != nil || slices.Contains(a.names, name) {
			return fmt.Errorf("%w: the name %q the image gives dataset %d is not usable", ErrInvalidArgument, name, i)
		}
	}
	staged := res.Path
	if man.Datasets[i].Decompress {
		dir, err := a.extract(res.Path, res.Size, name)
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		staged = dir
	}
	entries, err := a.install(staged, name, man.Datasets[i].Decompress, man)
	if err != nil {
		return err
	}
	a.rec.Received = append(a.rec.Received, name)
	a.rec.ReceivedIdx = append(a.rec.ReceivedIdx, i)
	a.rec.Entries = append(a.rec.Entries, entries...)
	a.log.Info("dataset fetched", "name", name, "source", res.Origin, "bytes", res.Size)
	a.events.Publish(man.ID, EventFetched, StatusCompleted, append(details, "filename", name)...)
	if len(a.rec.ReceivedIdx) == len(man.Datasets) {
		a.cleanupStaging()
		return a.transitionLocked(EvDataReceived)
	}
	return a.rec.save(a.dirs.state)
}

// failFetch fails the computation: an event naming the resource, its
// source and the class of failure, then RunFailed.
func (a *Agent) failFetch(man *manifest.Computation, state State, r pull.Resource, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.man != man || a.rec.State != state {
		return
	}
	a.log.Warn("fetch failed", "resource", r.What, "source", r.Source.URL, "err", err)
	a.events.Publish(man.ID, EventFetchFailed, StatusFailed, "resource", r.What, "source", r.Source.URL,
		"class", pull.ClassName(err), "error", err.Error())
	a.rec.RunError = err.Error()
	a.cleanupStaging()
	if terr := a.transitionLocked(EvRunFailed); terr != nil {
		a.log.Error("recording the failed fetch", "err", terr)
	}
}

// cleanupStaging removes every partial or staged download.
func (a *Agent) cleanupStaging() {
	os.RemoveAll(a.dirs.pull) // the fetcher makes it again when it needs it
}

// uploadRefusedForPulled is the error for an upload of a pulled resource.
func uploadRefusedForPulled(what, url string) error {
	return fmt.Errorf("%w: %s is fetched from its source %s; it is not uploaded", ErrWrongState, what, url)
}

// encryptedUpload reports whether an uploaded entry is in Cocos's encrypted
// format: its source is encrypted, has no URL (else it is pulled), and names
// an enabled KBS. Cocos decrypts such uploads with the KBS's key.
func encryptedUpload(src *manifest.ResourceSource, kbs *manifest.KBSConfig) bool {
	return src != nil && src.Encrypted && !src.Pulled() && kbs != nil && kbs.Enabled
}

// decryptUpload decrypts a spooled upload and returns the plaintext's path
// and SHA3-256.
func (a *Agent) decryptUpload(ctx context.Context, r pull.Resource, path string) (string, [32]byte, error) {
	if a.fetcher == nil {
		return "", [32]byte{}, fmt.Errorf("%w: %s is encrypted, and this agent has no way to its KBS (no egress edge)", ErrUndecryptable, r.What)
	}
	plain, sum, _, err := a.fetcher.DecryptFile(ctx, r, path)
	if err != nil {
		return "", sum, fmt.Errorf("%w: %v", ErrUndecryptable, err)
	}
	return plain, sum, nil
}
