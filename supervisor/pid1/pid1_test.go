package pid1

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var cmdlineTests = []struct {
	name string
	in   string
	want Cmdline
	get  map[string]string
}{
	{"empty", "", nil, map[string]string{"x": ""}},
	{"plain", "console=ttyS0 panic=-1 quiet\n", Cmdline{"console=ttyS0", "panic=-1", "quiet"}, map[string]string{"console": "ttyS0", "quiet": ""}},
	{"quoted value keeps spaces", `a="b c" d`, Cmdline{"a=b c", "d"}, map[string]string{"a": "b c"}},
	{"last wins", "cvmd.net=none cvmd.net=10.0.0.2/8", Cmdline{"cvmd.net=none", "cvmd.net=10.0.0.2/8"}, map[string]string{"cvmd.net": "10.0.0.2/8"}},
	{"value with equals", "agent.aa_kbc_params=cc_kbc::http://x=1", Cmdline{"agent.aa_kbc_params=cc_kbc::http://x=1"}, map[string]string{"agent.aa_kbc_params": "cc_kbc::http://x=1"}},
	{"tabs and runs of spaces", "a  \tb", Cmdline{"a", "b"}, nil},
	{"empty quotes are a parameter", `""`, Cmdline{""}, nil},
}

func TestParseCmdline(t *testing.T) {
	for _, tt := range cmdlineTests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseCmdline(tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseCmdline(%q) = %q, want %q", tt.in, got, tt.want)
			}
			for k, v := range tt.get {
				if g := got.Get(k); g != v {
					t.Errorf("Get(%q) = %q, want %q", k, g, v)
				}
			}
		})
	}
}

func FuzzParseCmdline(f *testing.F) {
	for _, tt := range cmdlineTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range ParseCmdline(s) {
			if strings.Contains(p, `"`) {
				t.Fatalf("parameter %q keeps a quote", p)
			}
		}
	})
}

var netTests = []struct {
	name    string
	in      string
	want    NetConfig
	wantErr string
}{
	{"default", "", DefaultNet, ""},
	{"none", "none", NetConfig{}, ""},
	{"address only", "192.168.1.5/24", NetConfig{Iface: "eth0", Addr: netip.MustParsePrefix("192.168.1.5/24")}, ""},
	{"address and gateway", "10.0.2.15/24,10.0.2.2", DefaultNet, ""},
	{"interface", "10.1.0.2/16,,ens3", NetConfig{Iface: "ens3", Addr: netip.MustParsePrefix("10.1.0.2/16")}, ""},
	{"ipv6", "fd00::2/64,fd00::1", NetConfig{Iface: "eth0", Addr: netip.MustParsePrefix("fd00::2/64"), Gateway: netip.MustParseAddr("fd00::1")}, ""},
	{"gateway outside", "10.0.2.15/24,10.0.3.1", NetConfig{}, "outside"},
	{"no prefix", "10.0.2.15", NetConfig{}, "address"},
	{"bad gateway", "10.0.2.15/24,gw", NetConfig{}, "gateway"},
	{"bad interface", "10.0.2.15/24,10.0.2.2,a/b", NetConfig{}, "interface"},
	{"too many parts", "10.0.2.15/24,10.0.2.2,eth0,x", NetConfig{}, "more than 3"},
}

func TestParseNet(t *testing.T) {
	for _, tt := range netTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNet(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseNet(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseNet(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseNet(f *testing.F) {
	for _, tt := range netTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseNet(s)
		if err != nil {
			return
		}
		if c.Gateway.IsValid() && !c.Addr.Masked().Contains(c.Gateway) {
			t.Fatalf("ParseNet(%q) accepted gateway %s outside %s", s, c.Gateway, c.Addr)
		}
		if c.Addr.IsValid() && (c.Iface == "" || strings.ContainsAny(c.Iface, "/ :\x00")) {
			t.Fatalf("ParseNet(%q) accepted interface %q", s, c.Iface)
		}
	})
}

var moduleListTests = []struct {
	name    string
	in      string
	want    []Module
	wantErr string
}{
	{"empty", "", nil, ""},
	{"order kept, comments skipped", "# load order\nkernel/a.ko\n\nkernel/b.ko optional\n", []Module{{Path: "kernel/a.ko"}, {Path: "kernel/b.ko", Optional: true}}, ""},
	{"absolute path", "/lib/a.ko\n", nil, "not a relative"},
	{"climbs out", "../a.ko\n", nil, "not a relative"},
	{"not a module", "kernel/a.txt\n", nil, "not a relative"},
	{"scratch group", "kernel/c.ko scratch\nkernel/d.ko optional scratch\n", []Module{{Path: "kernel/c.ko", Scratch: true}, {Path: "kernel/d.ko", Optional: true, Scratch: true}}, ""},
	{"unknown word", "kernel/a.ko maybe\n", nil, "want"},
	{"word twice", "kernel/a.ko optional optional\n", nil, "want"},
}

func TestParseModuleList(t *testing.T) {
	for _, tt := range moduleListTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseModuleList(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseModuleList(f *testing.F) {
	for _, tt := range moduleListTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mods, err := ParseModuleList(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range mods {
			if !filepath.IsLocal(m.Path) {
				t.Fatalf("accepted path %q", m.Path)
			}
		}
	})
}

func TestLoadModulesWithoutListIsNotAnError(t *testing.T) {
	n, err := loadModules(slog.New(slog.DiscardHandler), t.TempDir(), false)
	if n != 0 || err != nil {
		t.Fatalf("loadModules on an empty tree = %d, %v; want 0, nil", n, err)
	}
}

func TestLoadModuleNamesMissingFile(t *testing.T) {
	err := loadModule(filepath.Join(t.TempDir(), "nothere.ko"))
	if err == nil || !strings.Contains(err.Error(), "nothere.ko") {
		t.Fatalf("loadModule(missing) = %v, want an error naming the module", err)
	}
}

func TestMountTags(t *testing.T) {
	dir := t.TempDir()
	for name, tag := range map[string]string{"virtio3": "env_share\x00", "virtio4": "certs_share"} {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "mount_tag"), []byte(tag), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "uevent"), nil, 0o644)
	got, err := mountTags(dir)
	if want := []string{"certs_share", "env_share"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("mountTags = %q, %v; want %q", got, err, want)
	}
	if got, err := mountTags(filepath.Join(dir, "absent")); got != nil || err != nil {
		t.Fatalf("mountTags(absent) = %q, %v; want nothing", got, err)
	}
}

func event(typ, code uint16, value int32) []byte {
	b := make([]byte, eventSize)
	binary.NativeEndian.PutUint16(b[16:], typ)
	binary.NativeEndian.PutUint16(b[18:], code)
	binary.NativeEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestWatchEventsCountsPowerPresses(t *testing.T) {
	var in bytes.Buffer
	in.Write(event(evKey, keyPower, 1)) // press
	in.Write(event(0, 0, 0))            // EV_SYN
	in.Write(event(evKey, keyPower, 0)) // release: not a press
	in.Write(event(evKey, 30, 1))       // KEY_A
	in.Write(event(evKey, keyPower, 1)) // second press
	in.Write([]byte{1, 2, 3})           // torn tail
	presses := 0
	err := watchEvents(&in, func() { presses++ })
	if presses != 2 {
		t.Errorf("presses = %d, want 2", presses)
	}
	if err != io.ErrUnexpectedEOF {
		t.Errorf("watchEvents error = %v, want io.ErrUnexpectedEOF", err)
	}
}

func FuzzParseInputEvent(f *testing.F) {
	f.Add(event(evKey, keyPower, 1))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseInputEvent(b)
		if (err == nil) != (len(b) == eventSize) {
			t.Fatalf("ParseInputEvent(%d bytes) error = %v", len(b), err)
		}
		if err != nil && e != (InputEvent{}) {
			t.Fatalf("error with a non-zero event")
		}
	})
}

var debugTests = []struct {
	in      string
	want    DebugCommand
	wantErr bool
}{
	{"ping", DebugCommand{Verb: "ping"}, false},
	{"ps", DebugCommand{Verb: "ps"}, false},
	{"stacks", DebugCommand{Verb: "stacks"}, false},
	{"goroutines", DebugCommand{Verb: "goroutines"}, false},
	{"mem", DebugCommand{Verb: "mem"}, false},
	{"drop-caches", DebugCommand{Verb: "drop-caches"}, false},
	{"mem now", DebugCommand{}, true},
	{"kill agent", DebugCommand{Verb: "kill", Arg: "agent"}, false},
	{"  kill   logfwd \r", DebugCommand{Verb: "kill", Arg: "logfwd"}, false},
	{"kill", DebugCommand{}, true},
	{"kill ../x", DebugCommand{}, true},
	{"kill Agent", DebugCommand{}, true},
	{"kill a b", DebugCommand{}, true},
	{"reboot", DebugCommand{}, true},
	{"", DebugCommand{}, true},
}

func TestParseDebugCommand(t *testing.T) {
	for _, tt := range debugTests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDebugCommand(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseDebugCommand(%q) = %+v, %v", tt.in, got, err)
			}
		})
	}
}

func FuzzParseDebugCommand(f *testing.F) {
	for _, tt := range debugTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseDebugCommand(s)
		if err == nil && c.Verb == "kill" && !validChildName(c.Arg) {
			t.Fatalf("accepted child name %q", c.Arg)
		}
	})
}

func TestChildPIDsFindsNothingForUnknownName(t *testing.T) {
	pids, err := childPIDs("no-such-child-xyz")
	if err != nil || len(pids) != 0 {
		t.Fatalf("childPIDs = %v, %v", pids, err)
	}
}

var kmsgTests = []struct {
	name    string
	in      string
	want    KmsgRecord
	wantErr bool
}{
	{"run init", "6,812,2113456,-;Run /init as init process\n", KmsgRecord{Seq: 812, Micros: 2113456, Message: "Run /init as init process"}, false},
	{"continuation dropped", "4,1,5,-,caller=T1;hello\n SUBSYSTEM=acpi\n", KmsgRecord{Seq: 1, Micros: 5, Message: "hello"}, false},
	{"semicolon in message", "6,2,7,-;a;b\n", KmsgRecord{Seq: 2, Micros: 7, Message: "a;b"}, false},
	{"no separator", "6,2,7,-", KmsgRecord{}, true},
	{"short header", "6,2;x", KmsgRecord{}, true},
	{"bad time", "6,2,x,-;x", KmsgRecord{}, true},
}

func TestParseKmsg(t *testing.T) {
	for _, tt := range kmsgTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKmsg(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseKmsg(%q) = %+v, %v", tt.in, got, err)
			}
		})
	}
}

func FuzzParseKmsg(f *testing.F) {
	for _, tt := range kmsgTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParseKmsg(s); err == nil && strings.Contains(r.Message, "\n") {
			t.Fatalf("message %q keeps a newline", r.Message)
		}
	})
}

func TestProcessListShowsThisProcess(t *testing.T) {
	want := fmt.Sprintf("%d:", os.Getpid())
	if got := processList(); !strings.Contains(" "+got, " "+want) {
		t.Fatalf("processList() has no entry for pid %d: %.200s", os.Getpid(), got)
	}
}
