package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
)

// fakeQMP speaks QMP as qemu does on one end of a socketpair: a greeting,
// then one answer per command, with an asynchronous event before the answer
// to system_powerdown. It returns the other end and, once that end is
// closed, the commands it received.
func fakeQMP(t *testing.T, answers map[string]string) (*os.File, <-chan []string) {
	t.Helper()
	ours, theirs, err := socketpair("qmp")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []string, 1)
	go func() {
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}` + "\r\n"))
		var cmds []string
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var m struct{ Execute string }
			json.Unmarshal(sc.Bytes(), &m)
			cmds = append(cmds, m.Execute)
			if m.Execute == "system_powerdown" {
				c.Write([]byte(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}` + "\r\n"))
			}
			a, ok := answers[m.Execute]
			if !ok {
				a = `{"return": {}}`
			}
			c.Write([]byte(a + "\r\n"))
		}
		got <- cmds
	}()
	return theirs, got
}

func TestQMP(t *testing.T) {
	tests := []struct {
		name    string
		answers map[string]string
		wantErr string
	}{
		{"power down", nil, ""},
		{"command refused", map[string]string{"system_powerdown": `{"error": {"class": "GenericError", "desc": "no"}}`}, "QMP system_powerdown"},
		{"garbage", map[string]string{"qmp_capabilities": `not json`}, "bad QMP message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end, got := fakeQMP(t, tt.answers)
			q, err := newQMP(context.Background(), end)
			if err == nil {
				err = q.run("system_powerdown")
				if err == nil {
					err = q.run("system_powerdown") // the session stays usable
				}
				q.close()
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("qmp = %v, want error containing %q", err, tt.wantErr)
			}
			cmds := <-got
			if len(cmds) == 0 || cmds[0] != "qmp_capabilities" {
				t.Errorf("commands sent %q, want qmp_capabilities first", cmds)
			}
			if tt.wantErr == "" && len(cmds) != 3 {
				t.Errorf("commands sent %q, want capabilities and two power-downs on one session", cmds)
			}
		})
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no kernel", Config{Initrd: "i", Dir: t.TempDir()}, "required"},
		{"manager without pipe", Config{Kernel: "k", Initrd: "i", Dir: t.TempDir(), ManagerAddr: "127.0.0.1:1"}, "PipeCommand"},
		{"space in guestfwd command", Config{Kernel: "k", Initrd: "i", Dir: t.TempDir(), ManagerAddr: "127.0.0.1:1", PipeCommand: []string{"/a b/pipe"}}, "space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Start(context.Background(), tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDiskArgs(t *testing.T) {
	img := t.TempDir() + "/scratch.img"
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	args, err := diskArgs([]Disk{{Path: img, Serial: ScratchSerial}, {Path: img}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-drive", "file=" + img + ",if=none,id=disk0,format=raw,cache=writeback,aio=threads", "-device", "virtio-blk-pci,drive=disk0,serial=cvmd-scratch",
		"-drive", "file=" + img + ",if=none,id=disk1,format=raw,cache=writeback,aio=threads", "-device", "virtio-blk-pci,drive=disk1",
	}
	if strings.Join(args, " ") != strings.Join(want, " ") {
		t.Fatalf("diskArgs = %q\nwant %q", args, want)
	}
	for _, bad := range []Disk{
		{Path: img + ",readonly=on"},
		{Path: img, Serial: "a,b"},
		{Path: img, Serial: strings.Repeat("s", 21)},
		{Path: img + ".missing"},
	} {
		if _, err := diskArgs([]Disk{bad}); err == nil {
			t.Errorf("diskArgs(%+v) accepted", bad)
		}
	}
}
