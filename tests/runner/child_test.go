package runner_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/children/runner"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
	pb "github.com/cvmd/cvmd/proto/runner"
)

// runnerChildMain is this test binary re-executed as `cvmd runner` (see TestMain).
func runnerChildMain() {
	if err := child.Run("runner", runner.Main); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// TestRunnerChildProcess runs the real runner child (child.Run + runner.Main)
// as a process: config over fd 3, the agent's edge as "from:agent", Run over
// gRPC on that edge, sandbox requests over its control channel to the
// supervisor's handler here, and an orderly Stop.
func TestRunnerChildProcess(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.putFile(t, "algo", testBinary(t, "add"), 0o600)
	ctlSup, ctlChild, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	if err != nil {
		t.Fatal(err)
	}
	edgeAgent, edgeRunner, err := ipc.Socketpair(unix.SOCK_SEQPACKET, "edge")
	if err != nil {
		t.Fatal(err)
	}
	var stderr testutil.Buffer // written by exec's copier while the test reads it
	cmd := exec.Command(os.Args[0], "runner-child")
	cmd.ExtraFiles = []*os.File{ctlChild, edgeRunner} // fds 3 and 4
	cmd.Stderr = &stderr
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctlChild.Close()
	edgeRunner.Close()
	ctl := ipc.NewControl(ctlSup)
	settings, _ := anypb.New(&config.RunnerSettings{ComputationDir: w.comp})
	if err := ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: &control.ChildConfig{
		Version: 1, Name: "runner", LogLevel: "debug", StateDir: w.work, Fds: map[string]int32{"from:agent": 4}, Settings: settings, Generation: 1,
	}}}}, nil); err != nil {
		t.Fatal(err)
	}
	msg, _, err := ctl.Recv()
	if err != nil || msg.GetReady() == nil {
		t.Fatalf("want ready, got %v %v\nstderr:\n%s", msg, err, stderr.String())
	}
	var reqs sync.WaitGroup
	loopDone := make(chan struct{})
	go func() { // the supervisor's side of the runner's control channel
		defer close(loopDone)
		for {
			msg, files, err := ctl.Recv()
			if err != nil {
				w.algo.KillAll()
				return
			}
			for _, f := range files {
				f.Close()
			}
			switch b := msg.GetBody().(type) {
			case *control.Message_SandboxRequest:
				reqs.Go(func() {
					reply := &control.SandboxReply{Id: b.SandboxRequest.GetId()}
					files, _, err := w.algo.Request(context.Background(), b.SandboxRequest)
					if err != nil {
						reply.Error = err.Error()
					}
					ctl.Send(&control.Message{Body: &control.Message_SandboxReply{SandboxReply: reply}}, files)
					for _, f := range files {
						f.Close()
					}
				})
			case *control.Message_SandboxKill:
				w.algo.Kill(b.SandboxKill.GetId())
			}
		}
	}()
	d := ipc.NewDialer("runner", edgeAgent)
	cc, err := ipc.GRPCClient(d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := pb.NewRunnerClient(cc).Run(ctx, &pb.RunRequest{ComputationId: "c-child", AlgoType: "bin", AlgorithmPath: "algo", Args: []string{"--a", "2", "--b", "40"}})
	if err != nil || resp.GetError() != "" {
		t.Fatalf("Run: %v %q\nstderr:\n%s", err, resp.GetError(), stderr.String())
	}
	if got := w.result(t, "result.txt"); got != "42" {
		t.Errorf("result.txt = %q", got)
	}
	_, err = pb.NewRunnerClient(cc).Run(ctx, &pb.RunRequest{ComputationId: "c-child", AlgoType: "cobol", AlgorithmPath: "algo"})
	if err == nil || !strings.Contains(err.Error(), "algo_type") {
		t.Errorf("unknown type: err = %v", err)
	}
	cc.Close()
	ctl.Send(&control.Message{Body: &control.Message_Stop{Stop: &control.Stop{Reason: "test over"}}}, nil)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("runner exited: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Errorf("runner did not stop\nstderr:\n%s", stderr.String())
	}
	ctl.Close()
	<-loopDone
	reqs.Wait()
	edgeAgent.Close()
	if !strings.Contains(stderr.String(), "sum 42") || !strings.Contains(stderr.String(), `"computation_id":"c-child"`) {
		t.Errorf("the algorithm's output is not in the runner's log with its computation id:\n%s", stderr.String())
	}
}
