package runner_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cvmd/cvmd/proto/runner"
)

func TestBinAddition(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "add"), 0o600)
	resp := w.run(t, "bin", "--a", "100", "--b", "20")
	if resp.GetError() != "" || resp.GetExitCode() != 0 {
		t.Fatalf("run failed: %q (exit %d)\nlogs:\n%s", resp.GetError(), resp.GetExitCode(), w.rec.all())
	}
	if got := w.result(t, "result.txt"); got != "120" {
		t.Errorf("result.txt = %q, want 120", got)
	}
	if !w.rec.has("stdout", "sum 120") {
		t.Errorf("stdout not forwarded; logs:\n%s", w.rec.all())
	}
	if !w.rec.has("stderr", "adding 100 and 20") {
		t.Errorf("stderr not forwarded; logs:\n%s", w.rec.all())
	}
	var warned bool
	for _, e := range w.rec.events {
		if strings.HasPrefix(e, "AlgorithmRun/Warning") && strings.Contains(e, "adding 100 and 20") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no AlgorithmRun/Warning event for stderr; events: %v", w.rec.events)
	}
}

func TestDocker(t *testing.T) {
	tests := []struct {
		name    string
		archive func(testing.TB) []byte
		args    []string
		want    string
	}{
		{"docker save tarball, image cmd", dockerSaveTarball, nil, "3"},
		{"docker save tarball, algo_args override cmd", dockerSaveTarball, []string{"--a", "30", "--b", "12"}, "42"},
		{"OCI layout, image cmd", ociLayoutTarball, nil, "3"},
		{"OCI layout, algo_args override cmd", ociLayoutTarball, []string{"--a", "2", "--b", "5"}, "7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOpts{})
			w.put(t, "algo", tc.archive(t), 0o600)
			resp := w.run(t, "docker", tc.args...)
			if resp.GetError() != "" {
				t.Fatalf("run failed: %s\nlogs:\n%s", resp.GetError(), w.rec.all())
			}
			if got := w.result(t, "result.txt"); got != tc.want {
				t.Errorf("result %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWasm(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "wasmcount"), 0o600)
	w.putFile(t, "datasets/iris.csv", "testdata/iris.csv", 0o644)
	resp := w.run(t, "wasm")
	if resp.GetError() != "" {
		t.Fatalf("run failed: %s\nlogs:\n%s", resp.GetError(), w.rec.all())
	}
	if got := w.result(t, "count.txt"); got != "iris.csv 150" {
		t.Errorf("count.txt = %q, want \"iris.csv 150\"", got)
	}
	if w.rec.has("stdout", "ESCAPED") {
		t.Errorf("the module wrote into datasets:\n%s", w.rec.all())
	}
}

func TestPython(t *testing.T) {
	t.Run("addition", func(t *testing.T) {
		w := newWorld(t, worldOpts{})
		w.putFile(t, "algo", "testdata/python/addition.py", 0o600)
		resp := w.run(t, "python", "--a", "100", "--b", "20")
		if resp.GetError() != "" {
			t.Fatalf("run failed: %s\nlogs:\n%s", resp.GetError(), w.rec.all())
		}
		if got := w.result(t, "result.txt"); got != "120.0" {
			t.Errorf("result.txt = %q, want 120.0", got)
		}
	})
	t.Run("sklearn logistic regression on iris", func(t *testing.T) {
		w := newWorld(t, worldOpts{})
		w.putFile(t, "algo", "testdata/python/lin_reg.py", 0o600)
		w.putFile(t, "datasets/iris.csv", "testdata/iris.csv", 0o644)
		resp := w.run(t, "python")
		if resp.GetError() != "" {
			t.Fatalf("run failed: %s\nlogs:\n%s", resp.GetError(), w.rec.all())
		}
		acc := w.result(t, "accuracy.txt")
		if acc < "0.900" {
			t.Errorf("accuracy %s, want >= 0.9", acc)
		}
		if _, err := os.Stat(filepath.Join(w.comp, "results", "model.bin")); err != nil {
			t.Errorf("no model: %v", err)
		}
		t.Logf("accuracy %s", acc)
	})
}

func TestUnknownTypeRefusedBeforeAnythingRuns(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "add"), 0o600)
	_, err := w.svc.Run(context.Background(), &pb.RunRequest{ComputationId: "c1", AlgoType: "jar", AlgorithmPath: "algo"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `algo_type "jar"`) {
		t.Fatalf("err = %v, want InvalidArgument naming algo_type", err)
	}
	if len(w.rec.output("stdout")) != 0 || w.algo.Live() != 0 {
		t.Errorf("something ran")
	}
}
