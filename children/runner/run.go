package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/cvmd/cvmd/internal/lines"
	pb "github.com/cvmd/cvmd/proto/runner"

	"github.com/cvmd/cvmd/proto/control"
)

// Paths inside every algorithm sandbox.
const (
	cocosDir    = "/cocos"
	algoDest    = "/cocos/algo"
	datasetDest = "/cocos/datasets"
	resultsDest = "/cocos/results"
	venvDest    = "/cocos/venv"
	reqsDest    = "/cocos/requirements.txt"
	wheelsDest  = "/cocos/wheels"
	cvmdDest    = "/cocos/.cvmd"
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// run is one Run call in progress.
type run struct {
	svc          *Service
	log          *slog.Logger
	req          *pb.RunRequest
	algo         string // logical "computation/..."
	requirements string // logical, "" = none
	workRel      string // under the work dir: "work/<workRel>" to the supervisor
	workDir      string // the same, as the runner sees it
}

func (r *run) work(rel string) string { return "work/" + r.workRel + "/" + rel }

// do prepares the run for its type and runs the algorithm.
func (r *run) do(ctx context.Context) (*control.SandboxExit, error) {
	base := &control.SandboxRequest{
		ComputationId: r.req.GetComputationId(),
		Cwd:           cocosDir,
		Env:           []string{"PATH=" + defaultPath, "HOME=/tmp", "LANG=C.UTF-8"},
		Limits:        &control.Limits{WallClockMs: r.svc.cfg.Settings.GetWallClockMs(), MemoryBytes: r.svc.cfg.Settings.GetMemoryBytes()},
		Results:       "computation/results",
	}
	if _, err := os.Stat(filepath.Join(r.svc.cfg.ComputationDir, "results")); err != nil {
		return nil, fmt.Errorf("results dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.svc.cfg.ComputationDir, "datasets")); err == nil {
		base.Mounts = append(base.Mounts, &control.Mount{Source: "computation/datasets", Destination: datasetDest})
	}
	var req *control.SandboxRequest
	var err error
	switch r.req.GetAlgoType() {
	case TypeBin:
		req, err = r.prepareBin(base)
	case TypePython:
		req, err = r.preparePython(ctx, base)
	case TypeWasm:
		req, err = r.prepareWasm(base)
	case TypeDocker:
		req, err = r.prepareDocker(base)
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), ErrStopped) {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	exit, err := r.sandbox(ctx, req, "algorithm", slog.LevelInfo)
	if err != nil {
		return exit, err
	}
	if exit.GetStopped() && ctx.Err() != nil {
		// Killed because this run was stopped: say why it was stopped.
		return exit, context.Cause(ctx)
	}
	return exit, exitError("algorithm", exit)
}

// copyAlgorithm copies the algorithm into the run's work dir, readable and
// executable by the sandbox's uid, and returns its logical path.
func (r *run) copyAlgorithm(name string, mode os.FileMode) (string, error) {
	src, err := os.Open(filepath.Join(r.svc.cfg.ComputationDir, r.algo[len("computation/"):]))
	if err != nil {
		return "", fmt.Errorf("opening the algorithm: %w", err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(r.workDir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return "", fmt.Errorf("copying the algorithm: %w", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", fmt.Errorf("copying the algorithm: %w", err)
	}
	if err := dst.Close(); err != nil {
		return "", err
	}
	return r.work(name), os.Chmod(filepath.Join(r.workDir, name), mode)
}

func (r *run) prepareBin(base *control.SandboxRequest) (*control.SandboxRequest, error) {
	algo, err := r.copyAlgorithm("algo", 0o555)
	if err != nil {
		return nil, err
	}
	base.Mounts = append(base.Mounts, &control.Mount{Source: algo, Destination: algoDest})
	base.Args = append([]string{algoDest}, r.req.GetArgs()...)
	return base, nil
}

func (r *run) prepareWasm(base *control.SandboxRequest) (*control.SandboxRequest, error) {
	algo, err := r.copyAlgorithm("algo", 0o444)
	if err != nil {
		return nil, err
	}
	base.Mounts = append(base.Mounts,
		&control.Mount{Source: algo, Destination: algoDest},
		&control.Mount{Source: "cvmd", Destination: cvmdDest})
	args := []string{cvmdDest, "wasm-run", "--dir", datasetDest + ":ro", "--dir", resultsDest, "--cwd", cocosDir, algoDest}
	base.Args = append(append(args, "--"), r.req.GetArgs()...)
	return base, nil
}

func (r *run) prepareDocker(base *control.SandboxRequest) (*control.SandboxRequest, error) {
	for _, d := range []string{"image", "rootfs"} {
		if err := os.Mkdir(filepath.Join(r.workDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	img, err := unpackImage(filepath.Join(r.svc.cfg.ComputationDir, r.algo[len("computation/"):]),
		filepath.Join(r.workDir, "image"), filepath.Join(r.workDir, "rootfs"))
	if err != nil {
		return nil, fmt.Errorf("unpacking the docker image: %w", err)
	}
	// The archive is no longer needed: free the space before the run.
	os.RemoveAll(filepath.Join(r.workDir, "image"))
	args := append([]string(nil), img.Entrypoint...)
	if len(r.req.GetArgs()) > 0 {
		args = append(args, r.req.GetArgs()...)
	} else {
		args = append(args, img.Cmd...)
	}
	if len(args) == 0 {
		return nil, errors.New("docker image has neither entrypoint nor cmd, and no algo_args were given")
	}
	base.Rootfs = r.work("rootfs")
	base.Args = args
	base.Cwd = img.WorkingDir
	if base.Cwd == "" {
		base.Cwd = "/"
	}
	if !path.IsAbs(base.Cwd) {
		base.Cwd = "/" + base.Cwd
	}
	base.Cwd = path.Clean(base.Cwd)
	env := map[string]string{}
	var order []string
	for _, kv := range append(append([]string(nil), base.Env...), img.Env...) {
		k, v, _ := cutEnv(kv)
		if isProxyVar(k) {
			continue // the supervisor sets the proxy
		}
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	base.Env = nil
	for _, k := range order {
		base.Env = append(base.Env, k+"="+env[k])
	}
	return base, nil
}

// sandbox runs one sandbox to its end, streaming its output. level is the
// level of stdout lines (stderr lines are one above).
func (r *run) sandbox(ctx context.Context, req *control.SandboxRequest, what string, level slog.Level) (*control.SandboxExit, error) {
	started, err := r.svc.sandbox.start(ctx, req)
	if err != nil {
		if errors.Is(err, ErrStopped) {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	r.log.Debug("sandbox started", "what", what, "sandbox", started.sandboxID)
	var wg sync.WaitGroup
	max := int(r.svc.cfg.Settings.GetMaxLineBytes())
	if max <= 0 {
		max = 4096
	}
	compID := req.GetComputationId()
	warnings := 0
	wg.Go(func() {
		lines.Each(started.stdout, max, func(line string, _ bool) {
			r.log.Log(context.Background(), level, line, "stream", "stdout", "step", what)
		})
	})
	wg.Go(func() {
		lines.Each(started.stderr, max, func(line string, _ bool) {
			r.log.Log(context.Background(), level+4, line, "stream", "stderr", "step", what)
			// Cocos raises a Warning event for stderr output; bounded here.
			if warnings < maxStderrEvents {
				r.svc.event(compID, "Warning", "stderr", line)
			} else if warnings == maxStderrEvents {
				r.svc.event(compID, "Warning", "stderr", "further stderr lines are only logged")
			}
			warnings++
		})
	})
	// Stop: ask the supervisor to kill the sandbox; its pipes then end.
	stop := context.AfterFunc(ctx, func() { r.svc.sandbox.kill(started.id) })
	exit, werr := started.wait()
	stop()
	// The status comes after the process died; its output pipes end with it
	// (every process of the sandbox is gone) so this wait is bounded.
	waitTimeout(&wg, 5*time.Second)
	started.close()
	if werr != nil {
		return nil, fmt.Errorf("%s: %w", what, werr)
	}
	return exit, nil
}

const maxStderrEvents = 100

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// exitError says why a sandbox failed, or nil if it succeeded.
func exitError(what string, e *control.SandboxExit) error {
	switch {
	case e.GetError() != "":
		return fmt.Errorf("%s: %s", what, e.GetError())
	case e.GetStopped():
		return fmt.Errorf("%w: %s", ErrStopped, e.GetStopReason())
	case e.GetTimedOut():
		return fmt.Errorf("%s timed out (wall-clock limit %d ms)", what, e.GetWallClockLimitMs())
	case e.GetOomKilled():
		return fmt.Errorf("%s killed: out of memory (limit %d bytes)", what, e.GetMemoryLimitBytes())
	case e.GetResultsOverQuota():
		return fmt.Errorf("%s results over quota (%d bytes written, limit %d bytes)", what, e.GetResultsBytes(), e.GetResultsLimitBytes())
	case e.GetSignal() != "":
		return fmt.Errorf("%s killed by signal: %s", what, e.GetSignal())
	case e.GetExitCode() != 0:
		return fmt.Errorf("%s exited with code %d", what, e.GetExitCode())
	}
	return nil
}
