package lifecycle

import (
	"os"
	"testing"

	"github.com/cvmd/cvmd/supervisor/table"
)

// pass writes through a and reads from b: the two ends are one socketpair.
func connected(t *testing.T, a, b *os.File) bool {
	t.Helper()
	if _, err := a.Write([]byte("x")); err != nil {
		return false
	}
	buf := make([]byte, 1)
	n, err := b.Read(buf)
	return err == nil && n == 1
}

func TestWiringHandOver(t *testing.T) {
	tab := &table.Table{Children: []table.ChildSpec{{Name: "srv"}, {Name: "cli"}}, Edges: []table.Edge{{Client: "cli", Server: "srv"}, {Client: table.SupervisorName, Server: "srv"}}}
	w := newWiring(tab)
	defer w.close()
	gens := map[string]uint32{}
	live := func(n string) (uint32, bool) { g, ok := gens[n]; return g, ok }
	closeAll := func(m map[string]*os.File) {
		for _, f := range m {
			f.Close()
		}
	}

	// srv starts first: its end of the cli edge is made, cli's end parked;
	// the supervisor's end is handed over as a rewire to the supervisor.
	srv1, rw, err := w.endsFor("srv", 1, live)
	if err != nil {
		t.Fatal(err)
	}
	if len(srv1) != 2 || srv1["from:cli"] == nil || srv1["from:supervisor"] == nil {
		t.Fatalf("srv fds: %v", srv1)
	}
	if len(rw) != 1 || rw[0].peer != table.SupervisorName || rw[0].name != "to:srv" {
		t.Fatalf("rewires: %+v", rw)
	}
	if !connected(t, rw[0].f, srv1["from:supervisor"]) {
		t.Error("supervisor's end not connected to srv")
	}
	rw[0].f.Close()
	gens["srv"] = 1

	// cli starts while srv gen 1 runs: it takes the parked end, no rewire.
	cli1, rw, err := w.endsFor("cli", 1, live)
	if err != nil {
		t.Fatal(err)
	}
	if len(rw) != 0 {
		t.Fatalf("boot needed rewires: %+v", rw)
	}
	if !connected(t, cli1["to:srv"], srv1["from:cli"]) {
		t.Error("cli's parked end not connected to srv")
	}
	gens["cli"] = 1

	// srv restarts (gen 2): cli runs, so cli is sent a fresh end.
	delete(gens, "srv")
	closeAll(srv1)
	srv2, rw, err := w.endsFor("srv", 2, live)
	if err != nil {
		t.Fatal(err)
	}
	gens["srv"] = 2
	var toCli *os.File
	for _, r := range rw {
		if r.peer == "cli" {
			if r.name != "to:srv" {
				t.Errorf("cli's rewire named %q, want to:srv", r.name)
			}
			toCli = r.f
		} else {
			defer r.f.Close()
		}
	}
	if toCli == nil {
		t.Fatalf("no rewire for cli: %+v", rw)
	}
	if !connected(t, toCli, srv2["from:cli"]) {
		t.Error("cli's new end not connected to the new srv")
	}
	// cli's old end is dead: its peer (srv gen 1) is gone.
	if _, err := cli1["to:srv"].Write([]byte("x")); err == nil {
		t.Error("cli's old end still writable after srv gen 1 closed")
	}
	toCli.Close()
	closeAll(cli1)

	// srv restarts while cli is down: cli's end is parked for gen 3's sake,
	// and is not used by a cli that starts after srv died again.
	delete(gens, "cli")
	closeAll(srv2)
	delete(gens, "srv")
	srv3, _, err := w.endsFor("srv", 3, live)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(srv3)
	gens["srv"] = 3
	cli2, rw, err := w.endsFor("cli", 2, live)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(cli2)
	if len(rw) != 0 || !connected(t, cli2["to:srv"], srv3["from:cli"]) {
		t.Fatalf("cli after srv gen 3: rewires %+v", rw)
	}
}

func TestExtraFilesNumbering(t *testing.T) {
	ctl, _ := os.Open(os.DevNull)
	a, _ := os.Open(os.DevNull)
	b, _ := os.Open(os.DevNull)
	defer ctl.Close()
	defer a.Close()
	defer b.Close()
	files, fds := extraFiles(ctl, map[string]*os.File{"to:x": b, "from:y": a})
	if files[0] != ctl || len(files) != 3 {
		t.Fatalf("files %v", files)
	}
	// sorted by name: from:y (fd 4), to:x (fd 5)
	if fds["from:y"] != 4 || fds["to:x"] != 5 || files[1] != a || files[2] != b {
		t.Fatalf("fds %v", fds)
	}
}
