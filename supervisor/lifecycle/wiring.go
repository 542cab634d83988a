package lifecycle

import (
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/cvmd/cvmd/ipc"
	"github.com/cvmd/cvmd/supervisor/table"
)

// wiring owns the spare ends of edges: when a child starts before its peer,
// the peer's end is parked here until the peer starts (so a boot needs no
// rewiring); when a child starts while its peer runs, the peer is sent a
// fresh end (Rewire) instead. Owned by the event loop.
type wiring struct {
	table  *table.Table
	parked map[parkKey]parked
}

type parkKey struct {
	edge  table.Edge
	party string // who will take this end
}

type parked struct {
	f *os.File
	// peerGen is the generation of the peer that holds the other end: the
	// parked end is usable only while that incarnation runs.
	peerGen uint32
}

// rewire is an fd to send to a running peer: its fd name and the file.
type rewire struct {
	peer string
	name string
	f    *os.File
}

// liveness reports whether a party runs and its generation.
type liveness func(name string) (gen uint32, running bool)

func newWiring(t *table.Table) *wiring { return &wiring{table: t, parked: map[parkKey]parked{}} }

// endsFor makes (or takes from the park) child's end of every edge it is part
// of, by fd name. For peers that run, the other ends are returned as rewires
// (the caller sends and then closes them); for peers that do not, they are
// parked. The supervisor's own ends (peer "supervisor") are returned as
// rewires to peer table.SupervisorName. The caller owns the returned files.
func (w *wiring) endsFor(child string, gen uint32, live liveness) (map[string]*os.File, []rewire, error) {
	mine := map[string]*os.File{}
	var out []rewire
	fail := func(err error) (map[string]*os.File, []rewire, error) {
		for _, f := range mine {
			f.Close()
		}
		for _, r := range out {
			r.f.Close()
		}
		return nil, nil, err
	}
	for name, e := range w.table.EdgesOf(child) {
		peer, peerName := peerOf(e, child)
		key := parkKey{e, child}
		p, havePark := w.parked[key]
		if havePark {
			delete(w.parked, key)
		}
		peerGen, peerUp := live(peer)
		if peer == table.SupervisorName {
			peerUp = true
		}
		if havePark && peerUp && peer != table.SupervisorName && p.peerGen == peerGen {
			mine[name] = p.f
			continue
		}
		if havePark {
			p.f.Close()
		}
		a, b, err := ipc.Socketpair(unix.SOCK_SEQPACKET, child+":"+name)
		if err != nil {
			return fail(err)
		}
		mine[name] = a
		if peerUp {
			out = append(out, rewire{peer: peer, name: peerName, f: b})
			continue
		}
		w.park(e, peer, b, gen)
	}
	return mine, out, nil
}

// peerOf is the other party of edge e and the name of its fd for child's end.
func peerOf(e table.Edge, child string) (peer, peerName string) {
	if e.Server == child {
		return e.Client, "to:" + child
	}
	return e.Server, "from:" + child
}

// park keeps f for peer until it starts, usable while the party that holds
// the other end runs its generation gen; an older parked end is closed.
func (w *wiring) park(e table.Edge, peer string, f *os.File, gen uint32) {
	pk := parkKey{e, peer}
	if old, ok := w.parked[pk]; ok {
		old.f.Close()
	}
	w.parked[pk] = parked{f: f, peerGen: gen}
}

// adopt wires a child whose ends were made ahead (its standby holds its
// ends; held are the other ends, by the child's fd name): for peers that
// run, the held ends are returned as rewires; for peers that do not, they
// are parked for them (usable while generation gen of child runs). Ends
// parked for the child itself are closed: it has its own. The caller owns
// the returned files; adopt owns held.
func (w *wiring) adopt(child string, gen uint32, held map[string]*os.File, live liveness) []rewire {
	var out []rewire
	for name, e := range w.table.EdgesOf(child) {
		peer, peerName := peerOf(e, child)
		if p, ok := w.parked[parkKey{e, child}]; ok {
			p.f.Close()
			delete(w.parked, parkKey{e, child})
		}
		f := held[name]
		delete(held, name)
		if f == nil {
			continue
		}
		if _, up := live(peer); up || peer == table.SupervisorName {
			out = append(out, rewire{peer: peer, name: peerName, f: f})
			continue
		}
		w.park(e, peer, f, gen)
	}
	for _, f := range held {
		f.Close() // an edge the table no longer has (cannot happen: one table)
	}
	return out
}

// close releases every parked end.
func (w *wiring) close() {
	for k, p := range w.parked {
		p.f.Close()
		delete(w.parked, k)
	}
}

// extraFiles lays out a child's fds: the control channel is fd 3, the rest
// follow in name order. It returns ExtraFiles and the name → fd map that goes
// into the child's config (style 6: the one place that numbers fds).
func extraFiles(ctl *os.File, named map[string]*os.File) ([]*os.File, map[string]int32) {
	names := make([]string, 0, len(named))
	for n := range named {
		names = append(names, n)
	}
	sort.Strings(names)
	files := []*os.File{ctl}
	fds := map[string]int32{}
	for _, n := range names {
		files = append(files, named[n])
		fds[n] = int32(2 + len(files)) // ExtraFiles[i] is fd 3+i
	}
	return files, fds
}
