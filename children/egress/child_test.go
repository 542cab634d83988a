package egress

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/cvmd/cvmd/children/child"
	"github.com/cvmd/cvmd/internal/testutil"
	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/proto/config"
	"github.com/cvmd/cvmd/proto/control"
)

func TestMain(m *testing.M) {
	testutil.Main(m, testutil.Helpers{"egress": func() int { return testutil.ExitCode(child.Run("egress", Main)) }})
}

// ask sends one proxy request over c and returns the status code.
func ask(t *testing.T, c net.Conn, req string) int {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	return res.StatusCode
}

// TestChild runs the real egress child: a TCP listener made for "algo", an
// edge listener for "runner", the agent's from: edge, a rewired listener and
// a per-computation allowlist command.
func TestChild(t *testing.T) {
	_, port1 := origin(t)
	_, port2 := origin(t)
	tcp1, _ := net.Listen("tcp", "127.0.0.1:0")
	defer tcp1.Close()
	algoFile, _ := tcp1.(*net.TCPListener).File()
	runnerCli, runnerSrv, _ := ipc.Socketpair(unix.SOCK_SEQPACKET, "proxy:runner")
	agentCli, agentSrv, _ := ipc.Socketpair(unix.SOCK_SEQPACKET, "from:agent")
	runner, agentD := ipc.NewDialer("runner", runnerCli), ipc.NewDialer("agent", agentCli)
	defer runner.Close()
	defer agentD.Close()

	settings := &config.EgressSettings{
		Allow:   []string{"127.0.0.1:" + port1},
		Clients: map[string]*config.EgressAllowlist{"agent": {Allow: []string{"127.0.0.1:" + port2}}},
	}
	mine, theirs, _ := ipc.Socketpair(unix.SOCK_SEQPACKET, "control")
	ctl := ipc.NewControl(mine)
	defer ctl.Close()
	sany, _ := anypb.New(settings)
	files := []*os.File{theirs, algoFile, runnerSrv, agentSrv}
	cfg := &control.ChildConfig{Version: child.ConfigVersion, Name: "egress", LogLevel: "info", Settings: sany,
		Fds: map[string]int32{"proxy:algo": 4, "proxy:runner": 5, "from:agent": 6}}
	cmd := testutil.HelperCommand("egress")
	var logs testutil.Buffer
	cmd.Stderr = &logs
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	defer func() {
		ctl.Send(&control.Message{Body: &control.Message_Stop{Stop: &control.Stop{}}}, nil)
		if err := cmd.Wait(); err != nil {
			t.Errorf("child: %v\n%s", err, logs.String())
		}
	}()
	ctl.Send(&control.Message{Body: &control.Message_Hello{Hello: &control.Hello{Config: cfg}}}, nil)
	if msg, _, err := ctl.Recv(); err != nil || msg.GetReady() == nil {
		t.Fatalf("no READY: %v %v\n%s", msg, err, logs.String())
	}
	ctx := context.Background()
	dial := func(d *ipc.Dialer) net.Conn {
		c, err := d.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tcp := func(addr string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	connect := func(port string) string { return "CONNECT 127.0.0.1:" + port + " HTTP/1.1\r\nHost: x\r\n\r\n" }
	get := func(port string) string {
		return "GET http://127.0.0.1:" + port + "/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
	}

	checks := []struct {
		name string
		conn func() net.Conn
		req  string
		want int
	}{
		{"algo over its TCP listener, global entry", func() net.Conn { return tcp(tcp1.Addr().String()) }, connect(port1), 200},
		{"algo may not use the agent's entry", func() net.Conn { return tcp(tcp1.Addr().String()) }, connect(port2), 403},
		{"runner over its edge", func() net.Conn { return dial(runner) }, get(port1), 200},
		{"runner may not use the agent's entry", func() net.Conn { return dial(runner) }, get(port2), 403},
		{"agent over its from: edge, its own entry", func() net.Conn { return dial(agentD) }, get(port2), 200},
	}
	for _, c := range checks {
		if got := ask(t, c.conn(), c.req); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}

	// A per-computation entry for algo.
	body, _ := anypb.New(&config.EgressSetAllowlist{Client: "algo", Allow: []string{"127.0.0.1:" + port2}})
	ctl.Send(&control.Message{Body: &control.Message_Command{Command: &control.Command{Id: 7, Body: body}}}, nil)
	if msg, _, err := ctl.Recv(); err != nil || msg.GetCommandReply().GetId() != 7 || msg.GetCommandReply().GetError() != "" {
		t.Fatalf("command reply: %v %v", msg, err)
	}
	if got := ask(t, tcp(tcp1.Addr().String()), connect(port2)); got != 200 {
		t.Errorf("algo after the computation allowlist: %d", got)
	}

	// The algorithm's sandbox was replaced: a new listener for "algo".
	tcp2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer tcp2.Close()
	f2, _ := tcp2.(*net.TCPListener).File()
	ctl.Send(&control.Message{Body: &control.Message_Rewire{Rewire: &control.Rewire{Edge: "proxy:algo"}}}, map[string]*os.File{"proxy:algo": f2})
	f2.Close()
	// The connection waits in tcp2's backlog until the child serves it: no
	// retry is needed, only ask's deadline.
	if got := ask(t, tcp(tcp2.Addr().String()), connect(port1)); got != 200 {
		t.Fatalf("rewired listener: status %d, want 200", got)
	}
	old := tcp(tcp1.Addr().String())
	old.SetDeadline(time.Now().Add(500 * time.Millisecond))
	io.WriteString(old, connect(port1))
	if _, err := http.ReadResponse(bufio.NewReader(old), nil); err == nil {
		t.Error("the replaced algo listener still answers")
	}
	old.Close()
	if !strings.Contains(logs.String(), `"decision":"denied"`) || !strings.Contains(logs.String(), `"client":"runner"`) {
		t.Errorf("decisions not logged with client identity:\n%s", logs.String())
	}
}
