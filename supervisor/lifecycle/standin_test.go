package lifecycle

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/proto/control"
)

// standIn is the child the lifecycle tests run: this test binary
// re-executed by the Supervisor in the child's sandbox (TestMain), under
// children/child's runtime as every cvmd child. Its settings (a StringValue
// "MODE[:computation id]") say how it behaves:
//
//   - ok: says READY and runs until told to stop;
//   - silent: never says READY, runs until told to stop;
//   - stubborn: says READY and ignores Stop and SIGTERM (only SIGKILL ends it);
//   - crash: exits with status 3 before saying READY;
//   - silent: never says READY (its dependents stay created);
//   - asksandbox: says READY, asks the supervisor for an algorithm sandbox
//     and prints the reply's error as "sandbox reply: ...";
//   - dial: says READY, dials each of its "to:" edges (for 20 s at most)
//     and prints "reached SERVER generation N" or "unreachable SERVER: ...".
//
// It prints "mode MODE generation N computation ID" when it starts.
func standIn(ctx context.Context, env *child.Env) error {
	var s wrapperspb.StringValue
	if err := env.Settings(&s); err != nil {
		return err
	}
	mode, _, _ := strings.Cut(s.GetValue(), ":")
	fmt.Printf("mode %s generation %d computation %s\n", mode, env.Config.GetGeneration(), env.Config.GetComputationId())
	switch mode {
	case "crash":
		os.Exit(3)
	case "silent":
		<-ctx.Done()
		return nil
	case "asksandbox":
		replied := make(chan string, 1)
		env.Intercept(func(m *control.Message, files map[string]*os.File) bool {
			r := m.GetSandboxReply()
			if r == nil {
				return false
			}
			for _, f := range files {
				f.Close()
			}
			replied <- r.GetError()
			return true
		})
		if err := env.Ready(); err != nil {
			return err
		}
		req := &control.SandboxRequest{Id: 1, ComputationId: "c", Args: []string{"/bin/true"}}
		if err := env.Send(&control.Message{Body: &control.Message_SandboxRequest{SandboxRequest: req}}, nil); err != nil {
			return err
		}
		select {
		case e := <-replied:
			fmt.Printf("sandbox reply: %s\n", e)
		case <-ctx.Done():
			return nil
		}
		<-ctx.Done()
		return nil
	}
	if mode == "silent" {
		<-ctx.Done()
		return nil
	}
	if mode == "stubborn" {
		// The runtime stops catching SIGTERM once Stop came: ignore it.
		signal.Ignore(syscall.SIGTERM)
	}
	if err := env.Ready(); err != nil {
		return err
	}
	if mode == "dial" {
		for name := range env.Config.GetFds() {
			server, ok := strings.CutPrefix(name, "to:")
			if !ok {
				continue
			}
			d, err := env.Dialer(server)
			if err != nil {
				return err
			}
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			c, err := d.Dial(dctx)
			cancel()
			if err != nil {
				fmt.Printf("unreachable %s: %v\n", server, err)
				continue
			}
			c.Close()
			fmt.Printf("reached %s generation %d\n", server, env.Config.GetGeneration())
		}
	}
	if mode == "stubborn" {
		for {
			time.Sleep(time.Hour)
		}
	}
	<-ctx.Done()
	return nil
}
