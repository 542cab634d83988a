package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/cvmd/cvmd/proto/control"
)

// preparePython makes the run's venv (with the base image's system
// site-packages) and installs the requirements into it, each step in an
// algorithm sandbox of its own: pip runs code from the packages it installs,
// so it gets no more than the algorithm (its only way out is the egress
// proxy). The venv lives at the same path (/cocos/venv) in every step, since
// a venv records its own path.
func (r *run) preparePython(ctx context.Context, base *control.SandboxRequest) (*control.SandboxRequest, error) {
	set := r.svc.cfg.Settings
	algo, err := r.copyAlgorithm("algo", 0o444)
	if err != nil {
		return nil, err
	}
	py := set.GetPython()
	if py == "" {
		py = "/usr/bin/python3"
	}
	if rt := r.req.GetPythonRuntime(); rt != "" {
		py = filepath.Join(filepath.Dir(py), rt)
	}
	if err := os.Mkdir(filepath.Join(r.workDir, "venv"), 0o755); err != nil {
		return nil, err
	}
	venv := &control.Mount{Source: r.work("venv"), Destination: venvDest, Writable: true}
	prep := func(args ...string) *control.SandboxRequest {
		p := proto.Clone(base).(*control.SandboxRequest)
		p.Results = ""
		p.Mounts = []*control.Mount{venv}
		p.Args = args
		p.Limits.WallClockMs = set.GetPrepareWallClockMs()
		return p
	}
	exit, err := r.sandbox(ctx, prep(py, "-m", "venv", "--system-site-packages", "--without-pip", venvDest), "python venv", slog.LevelDebug)
	if err == nil {
		err = exitError("creating the python venv", exit)
	}
	if err != nil {
		return nil, err
	}
	if r.requirements != "" {
		reqs, err := r.copyFile(r.requirements, "requirements.txt")
		if err != nil {
			return nil, err
		}
		p := prep(venvDest+"/bin/python", "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
			"--no-cache-dir", "--progress-bar", "off", "-r", reqsDest)
		p.Mounts = append(p.Mounts, &control.Mount{Source: reqs, Destination: reqsDest})
		if u := set.GetPipIndexUrl(); u != "" {
			p.Args = append(p.Args, "--index-url", u)
		}
		if h := set.GetPipTrustedHost(); h != "" {
			p.Args = append(p.Args, "--trusted-host", h)
		}
		if w := set.GetPipFindLinks(); strings.HasPrefix(w, "/") {
			// A wheel dir of the base image: visible read-only already.
			p.Args = append(p.Args, "--find-links", w)
		} else if w != "" {
			p.Mounts = append(p.Mounts, &control.Mount{Source: w, Destination: wheelsDest})
			p.Args = append(p.Args, "--find-links", wheelsDest)
		}
		if set.GetPipNoIndex() {
			p.Args = append(p.Args, "--no-index")
		}
		exit, err := r.sandbox(ctx, p, "pip install", slog.LevelInfo)
		if err == nil {
			err = exitError("installing requirements (pip)", exit)
		}
		if err != nil {
			return nil, err
		}
	}
	venv.Writable = false
	base.Mounts = append(base.Mounts, venv, &control.Mount{Source: algo, Destination: algoDest})
	base.Env = append(base.Env, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "VIRTUAL_ENV="+venvDest,
		"PATH="+venvDest+"/bin:"+defaultPath)
	base.Env = dedupEnv(base.Env)
	base.Args = append([]string{venvDest + "/bin/python", algoDest}, r.req.GetArgs()...)
	return base, nil
}

// copyFile copies a logical computation/ file into the run's work dir
// (readable by the sandbox's uid) and returns its logical work path.
func (r *run) copyFile(logical, name string) (string, error) {
	rel, ok := strings.CutPrefix(logical, "computation/")
	if !ok {
		return "", fmt.Errorf("%s: not a computation path", logical)
	}
	b, err := os.ReadFile(filepath.Join(r.svc.cfg.ComputationDir, rel))
	if err != nil {
		return "", err
	}
	if len(b) > 1<<20 {
		return "", errors.New("requirements file larger than 1 MiB")
	}
	if err := os.WriteFile(filepath.Join(r.workDir, name), b, 0o444); err != nil {
		return "", err
	}
	return r.work(name), nil
}

// dedupEnv keeps the last value of each name, in first-seen order.
func dedupEnv(env []string) []string {
	val := map[string]string{}
	var order []string
	for _, kv := range env {
		k, v, _ := cutEnv(kv)
		if _, ok := val[k]; !ok {
			order = append(order, k)
		}
		val[k] = v
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+val[k])
	}
	return out
}

func cutEnv(kv string) (k, v string, ok bool) { return strings.Cut(kv, "=") }

func isProxyVar(k string) bool {
	switch strings.ToUpper(k) {
	case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
		return true
	}
	return false
}
