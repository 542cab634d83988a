package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/cocos/chunks"
	"github.com/cvmd/cvmd/cocos/manifest"
	"github.com/cvmd/cvmd/cocos/rolesig"
	"github.com/cvmd/cvmd/cocos/zipdir"
	agentpb "github.com/cvmd/cvmd/proto/agent"
	"github.com/cvmd/cvmd/pull"
)

// maxRequirements caps requirements.txt.
const maxRequirements = 16 << 20

// The bulk fields of the upload and download messages (proto/agent), which
// travel as gRPC buffers (cocos/chunks).
const (
	algorithmField = 1 // AlgoRequest.algorithm
	datasetField   = 1 // DataRequest.dataset
	fileField      = 1 // ResultResponse, AttestationResponse and IMAMeasurementsResponse .file
)

// snapshot is what a request needs from the shared state, read under mu.
type snapshot struct {
	state State
	man   *manifest.Computation
	keys  *manifest.Keys
	names []string
	rec   record
}

func (a *Agent) snapshot() snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec := *a.rec
	rec.Received = slices.Clone(a.rec.Received) // appended to under mu
	rec.ReceivedIdx = slices.Clone(a.rec.ReceivedIdx)
	return snapshot{state: a.rec.State, man: a.man, keys: a.keys, names: a.names, rec: rec}
}

func incomingMeta(ctx context.Context) (requestMeta, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return parseMeta(md)
}

// algo receives the algorithm (and requirements). Checks run in Cocos's
// order: signature, then state, then content.
func (a *Agent) algo(stream agentpb.AgentService_AlgoServer) error {
	m, err := incomingMeta(stream.Context())
	if err != nil {
		return err
	}
	sn := a.snapshot()
	if sn.man == nil {
		return ErrWrongState
	}
	if sn.keys.Algorithm == nil {
		return ErrAlgorithmNotDeclared
	}
	verify, err := a.signatureCheck(stream.Context(), m, sn)
	if err != nil {
		return err
	}
	if !verify(sn.keys.Algorithm, rolesig.AlgorithmProvider) {
		return fmt.Errorf("%w: the signature is not the algorithm provider's", ErrUnauthenticated)
	}
	if sn.state != ReceivingAlgorithm {
		return ErrWrongState
	}
	if src := sn.man.Algorithm.Source; src.Pulled() {
		return uploadRefusedForPulled("the algorithm", src.URL)
	}
	sp, err := a.newSpool(stream.Context(), "algorithm", a.lim.maxAlgorithm)
	if err != nil {
		return err
	}
	defer sp.abort()
	reqs := smallFile{max: maxRequirements, what: "requirements"}
	rest := &agentpb.AlgoRequest{}
	for {
		msg := chunks.Message{Field: algorithmField, Rest: rest}
		if err := stream.RecvMsg(&msg); err != nil {
			if err := recvErr(err); err != nil {
				return err
			}
			break
		}
		if err := reqs.add(rest.GetRequirements()); err != nil {
			msg.Data.Free()
			return err
		}
		if err := sp.WriteBuffers(msg.Data); err != nil {
			return err
		}
	}
	if sp.n == 0 {
		return ErrEmptyAlgorithm
	}
	sum, err := sp.finish()
	if err != nil {
		return err
	}
	algoPath := sp.path
	if al := sn.man.Algorithm; encryptedUpload(al.Source, al.KBS) {
		r := pull.Resource{What: "algorithm", Source: *al.Source, KBS: al.KBS, Hash: al.Hash}
		if algoPath, sum, err = a.decryptUpload(stream.Context(), r, sp.path); err != nil {
			return err
		}
		defer os.Remove(algoPath)
	}
	if sum != sn.man.Algorithm.Hash {
		return ErrHashMismatch
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rec.State != ReceivingAlgorithm || a.man != sn.man {
		return ErrWrongState // another upload won, or the computation changed
	}
	if reqs.Len() > 0 {
		if err := os.WriteFile(a.dirs.requirements, reqs.Bytes(), 0o644); err != nil {
			return fmt.Errorf("saving requirements: %w", err)
		}
		os.Chmod(a.dirs.requirements, 0o644) // the runner reads it; our umask is 077
	} else {
		os.Remove(a.dirs.requirements)
	}
	if err := os.Chmod(algoPath, 0o755); err != nil {
		return err
	}
	if err := os.Rename(algoPath, a.dirs.algo); err != nil {
		return fmt.Errorf("saving algorithm: %w", err)
	}
	// The manifest's declaration wins over the request's metadata.
	a.rec.AlgoType, a.rec.AlgoArgs = m.AlgoType, m.AlgoArgs
	if t := a.man.Algorithm.AlgoType; t != "" {
		if t != m.AlgoType {
			a.log.Warn("algo_type metadata differs from the manifest; using the manifest's", "metadata", m.AlgoType, "manifest", t)
		}
		a.rec.AlgoType = t
	}
	if len(a.man.Algorithm.AlgoArgs) > 0 {
		a.rec.AlgoArgs = a.man.Algorithm.AlgoArgs
	}
	a.rec.PythonRuntime = m.PythonRuntime
	a.rec.Requirements = reqs.Len() > 0
	a.log.Info("algorithm received", append(sp.logAttrs(), "algo_type", a.rec.AlgoType)...)
	if err := a.transitionLocked(EvAlgorithmReceived); err != nil {
		return err
	}
	return stream.SendAndClose(&agentpb.AlgoResponse{})
}

// data receives one dataset, matched by filename.
func (a *Agent) data(stream agentpb.AgentService_DataServer) error {
	m, err := incomingMeta(stream.Context())
	if err != nil {
		return err
	}
	sn := a.snapshot()
	if sn.man == nil {
		return ErrWrongState
	}
	verify, err := a.signatureCheck(stream.Context(), m, sn)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(sn.keys.Datasets, func(k crypto.PublicKey) bool { return verify(k, rolesig.DataProvider) }) {
		return fmt.Errorf("%w: the signature is no data provider's", ErrUnauthenticated)
	}
	if sn.state != ReceivingData {
		return ErrWrongState
	}
	rest := &agentpb.DataRequest{}
	msg := chunks.Message{Field: datasetField, Rest: rest}
	if err := stream.RecvMsg(&msg); err != nil {
		if err := recvErr(err); err != nil {
			return err
		}
		return ErrEmptyDataset
	}
	// Until the spool takes them, the first chunk's buffers are ours to free.
	first := msg.Data
	defer func() { first.Free() }()
	name := rest.GetFilename()
	if err := manifest.ValidFilename(name); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFilename, err)
	}
	candidates, err := a.uploadCandidates(sn, name, verify)
	if err != nil {
		return err
	}
	sp, err := a.newSpool(stream.Context(), "dataset "+name, a.lim.maxDataset)
	if err != nil {
		return err
	}
	defer sp.abort()
	first = nil
	for {
		if f := rest.GetFilename(); f != "" && f != name {
			msg.Data.Free()
			return fmt.Errorf("%w: filename changed from %q to %q during the upload", ErrBadFilename, name, f)
		}
		if err := sp.WriteBuffers(msg.Data); err != nil {
			return err
		}
		msg = chunks.Message{Field: datasetField, Rest: rest}
		if err := stream.RecvMsg(&msg); err != nil {
			if err := recvErr(err); err != nil {
				return err
			}
			break
		}
	}
	if sp.n == 0 {
		return ErrEmptyDataset
	}
	sum, err := sp.finish()
	if err != nil {
		return err
	}
	dataPath := sp.path
	if enc := slices.IndexFunc(candidates, func(i int) bool {
		return encryptedUpload(sn.man.Datasets[i].Source, sn.man.Datasets[i].KBS)
	}); enc >= 0 {
		d := sn.man.Datasets[candidates[enc]]
		r := pull.Resource{What: "dataset " + d.Label(candidates[enc]), Source: *d.Source, KBS: d.KBS, Hash: d.Hash}
		if dataPath, sum, err = a.decryptUpload(stream.Context(), r, sp.path); err != nil {
			return err
		}
		defer os.Remove(dataPath)
	}
	idx := slices.IndexFunc(candidates, func(i int) bool { return sn.man.Datasets[i].Hash == sum })
	if idx < 0 {
		if sn.names[candidates[0]] == name {
			return ErrHashMismatch
		}
		return fmt.Errorf("%w: %q: no dataset is named so, and its SHA3-256 %x is not that of any dataset declared without a filename",
			ErrDatasetNotDeclared, name, sum)
	}
	idx = candidates[idx]
	decompress := m.Decompress || sn.man.Datasets[idx].Decompress
	staged := dataPath
	if decompress {
		st, err := os.Stat(dataPath)
		if err != nil {
			return err
		}
		// Extract outside the lock (it can take a while), into a private
		// staging dir, then move the entries in under the lock.
		if staged, err = a.extract(dataPath, st.Size(), name); err != nil {
			return err
		}
		defer os.RemoveAll(staged)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rec.State != ReceivingData || a.man != sn.man {
		return ErrWrongState
	}
	if slices.Contains(a.rec.ReceivedIdx, idx) {
		return fmt.Errorf("%w: dataset %s was already received", ErrAllReceived, sn.man.Datasets[idx].Label(idx))
	}
	entries, err := a.install(staged, name, decompress, sn.man)
	if err != nil {
		return err
	}
	a.rec.Received = append(a.rec.Received, name)
	a.rec.ReceivedIdx = append(a.rec.ReceivedIdx, idx)
	a.rec.Entries = append(a.rec.Entries, entries...)
	if len(a.rec.ReceivedIdx) == len(a.man.Datasets) {
		err = a.transitionLocked(EvDataReceived)
	} else {
		err = a.rec.save(a.dirs.state)
	}
	if err != nil {
		// Not recorded: take the files back out so a retry can succeed.
		a.rec.Received = a.rec.Received[:len(a.rec.Received)-1]
		a.rec.ReceivedIdx = a.rec.ReceivedIdx[:len(a.rec.ReceivedIdx)-1]
		a.rec.Entries = a.rec.Entries[:len(a.rec.Entries)-len(entries)]
		for _, e := range entries {
			os.RemoveAll(filepath.Join(a.dirs.datasets, e))
		}
		return err
	}
	a.log.Info("dataset received", append(sp.logAttrs(), "filename", name, "decompressed", decompress)...)
	return stream.SendAndClose(&agentpb.DataResponse{})
}

// uploadCandidates are the datasets an upload named name may be: the one
// declared with that name, else every dataset declared without a filename
// that is still expected and whose provider signed the request (the hash,
// known once received, picks among them). Pulled datasets are never
// uploaded.
func (a *Agent) uploadCandidates(sn snapshot, name string, verify func(crypto.PublicKey, string) bool) ([]int, error) {
	received := func(i int) bool { return slices.Contains(sn.rec.ReceivedIdx, i) }
	if i := slices.Index(sn.names, name); i >= 0 {
		d := sn.man.Datasets[i]
		switch {
		case d.Source.Pulled():
			return nil, uploadRefusedForPulled(fmt.Sprintf("dataset %q", name), d.Source.URL)
		case received(i):
			return nil, fmt.Errorf("%w: dataset %q was already received", ErrAllReceived, name)
		case !verify(sn.keys.Datasets[i], rolesig.DataProvider):
			return nil, fmt.Errorf("%w: dataset %q belongs to another data provider", ErrPermissionDenied, name)
		}
		return []int{i}, nil
	}
	var out []int
	unnamed := 0
	for i, d := range sn.man.Datasets {
		if sn.names[i] != "" || d.Source.Pulled() || received(i) {
			continue
		}
		unnamed++
		if verify(sn.keys.Datasets[i], rolesig.DataProvider) {
			out = append(out, i)
		}
	}
	switch {
	case len(out) > 0:
		return out, nil
	case unnamed > 0:
		return nil, fmt.Errorf("%w: dataset %q: no dataset has that name, and the datasets declared without one belong to other data providers", ErrPermissionDenied, name)
	}
	return nil, fmt.Errorf("%w: %q", ErrDatasetNotDeclared, name)
}

// extract unpacks the zip at p into a new staging dir and returns it. It is
// bounded by max_zip_entries, max_unzipped_bytes and the free-space floor
// (min_free_bytes), checked as it writes; on any refusal nothing of it is
// left and the error names the dataset and the limit.
func (a *Agent) extract(p string, size int64, dataset string) (string, error) {
	dir, err := os.MkdirTemp(a.dirs.incoming, "unzip-*")
	if err != nil {
		return "", err
	}
	f, err := os.Open(p)
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	defer f.Close()
	lim := zipdir.Limits{MaxEntries: a.lim.maxZipEntries, MaxBytes: a.lim.maxUnzipped,
		Room: func() (int64, error) { return room(dir, a.lim.minFree) }}
	if err := zipdir.Extract(f, size, dir, lim); err != nil {
		os.RemoveAll(dir)
		switch {
		case errors.Is(err, zipdir.ErrTooLarge):
			return "", fmt.Errorf("dataset %q: %w (max_zip_entries %d, max_unzipped_bytes %d): %v", dataset, ErrTooLarge, a.lim.maxZipEntries, a.lim.maxUnzipped, err)
		case errors.Is(err, zipdir.ErrNoRoom), isDiskFull(err):
			return "", fmt.Errorf("dataset %q: %w: extracting it would leave less than min_free_bytes %d free: %v", dataset, ErrNoSpace, a.lim.minFree, err)
		}
		return "", fmt.Errorf("dataset %q: %w", dataset, err)
	}
	return dir, nil
}

// install moves a received dataset into the datasets dir: the file itself,
// or the top-level entries of an extracted zip, refusing to replace
// anything and refusing an archive entry named like another declared
// dataset (which would take that dataset's place before its provider could
// upload it). It returns the top-level names it created. Preconditions:
// a.mu held.
func (a *Agent) install(staged, name string, decompressed bool, man *manifest.Computation) ([]string, error) {
	if err := os.MkdirAll(a.dirs.datasets, 0o755); err != nil {
		return nil, err
	}
	// The algorithm runs as another uid: the dir must be searchable whatever
	// the umask (it is 077 in the sandbox), as the files are made 0644.
	os.Chmod(a.dirs.datasets, 0o755)
	if !decompressed {
		os.Chmod(staged, 0o644)
		if err := renameNew(staged, filepath.Join(a.dirs.datasets, name)); err != nil {
			return nil, err
		}
		return []string{name}, nil
	}
	ents, err := os.ReadDir(staged)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if other := declaredAs(man, e.Name()); other != "" && other != name {
			return nil, fmt.Errorf("%w: dataset %q: archive entry %q has the name of declared dataset %q; nothing was installed", ErrInvalidArgument, name, e.Name(), other)
		}
		if _, err := os.Lstat(filepath.Join(a.dirs.datasets, e.Name())); err == nil {
			return nil, fmt.Errorf("%w: dataset %q: archive entry %q already exists in the datasets (from another upload); nothing was installed", ErrInvalidArgument, name, e.Name())
		}
		names = append(names, e.Name())
	}
	for i, n := range names {
		if err := renameNew(filepath.Join(staged, n), filepath.Join(a.dirs.datasets, n)); err != nil {
			for _, done := range names[:i] {
				os.RemoveAll(filepath.Join(a.dirs.datasets, done))
			}
			return nil, err
		}
	}
	return names, nil
}

// declaredAs returns the declared dataset filename equal to entry, or "".
func declaredAs(man *manifest.Computation, entry string) string {
	for _, d := range man.Datasets {
		if d.Filename == entry {
			return d.Filename
		}
	}
	return ""
}

// renameNew renames src to dst unless dst exists.
func renameNew(src, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("%w: %s already exists", ErrInvalidArgument, filepath.Base(dst))
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("saving %s: %w", filepath.Base(dst), err)
	}
	return nil
}

// result streams the results zip to a declared consumer.
func (a *Agent) result(stream agentpb.AgentService_ResultServer) error {
	m, err := incomingMeta(stream.Context())
	if err != nil {
		return err
	}
	sn := a.snapshot()
	if sn.man == nil {
		return ErrResultsNotReady
	}
	verify, err := a.signatureCheck(stream.Context(), m, sn)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(sn.keys.Consumers, func(k crypto.PublicKey) bool { return verify(k, rolesig.Consumer) }) {
		return ErrUndeclaredConsumer
	}
	switch sn.state {
	case ConsumingResults, Complete:
	case Failed:
		return fmt.Errorf("%w: %s", ErrRunFailed, sn.rec.RunError)
	default:
		return ErrResultsNotReady
	}
	f, err := os.Open(a.dirs.resultsZip)
	if err != nil {
		return fmt.Errorf("opening results: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	err = sendFile(stream, f, st.Size(), &agentpb.ResultResponse{})
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rec.State == ConsumingResults && a.man == sn.man {
		return a.transitionLocked(EvResultsConsumed)
	}
	return nil
}

// chunkSize is the largest chunk a download sends, as Cocos (1 MiB).
const chunkSize = 1 << 20

// downloadBuffers are the chunks downloads are read into; gRPC hands each
// back once written (cocos/chunks), so a download reuses a few buffers.
var downloadBuffers = chunks.NewPool(chunkSize)

// sendFile sends the file-size header, then r in chunks of at most 1 MiB,
// each a message whose file field (1) is the chunk and whose other fields
// are rest's. r is read ahead of the sending, in a goroutine of its own.
func sendFile(stream grpc.ServerStream, r io.Reader, size int64, rest proto.Message) error {
	if err := stream.SetHeader(metadata.Pairs(mdFileSize, fmt.Sprint(size))); err != nil {
		return fmt.Errorf("sending header: %w", err)
	}
	var sendErr error
	sent, err := chunks.ReadChunks(r, downloadBuffers, func(b mem.Buffer) error {
		if sendErr = stream.SendMsg(&chunks.Message{Field: fileField, Data: mem.BufferSlice{b}, Rest: rest}); sendErr != nil {
			return sendErr
		}
		return nil
	})
	switch {
	case sendErr != nil:
		return fmt.Errorf("sending: %w", sendErr)
	case err != nil:
		return fmt.Errorf("reading: %w", err)
	case sent != size:
		return fmt.Errorf("sent %d bytes of %d", sent, size)
	}
	return nil
}
