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

// MachineCocos is Cocos's manager's command line, option for option.
func TestCocosArgs(t *testing.T) {
	dir := t.TempDir()
	vars := dir + "/vars.fd"
	os.WriteFile(vars, []byte("vars"), 0o600)
	cfg := Config{Kernel: "vmlinuz", Initrd: "initrd", Dir: dir, Accel: "tcg", CPUs: 4, MemoryMiB: 2048, HostPort: 6100,
		EnvDir: dir + "/env", Append: "cvmd.x=1", Cocos: CocosOptions{OVMFCode: vars, OVMFVars: vars, ID: "abc"}}
	args, err := cocosArgs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	for _, want := range []string{
		"-machine q35 -cpu EPYC -smp 4,maxcpus=64 -m 2048M,slots=5,maxmem=30G",
		"-drive if=pflash,format=raw,unit=0,file=" + vars + ",readonly=on",
		"-drive if=pflash,format=raw,unit=1,file=" + dir + "/OVMF_VARS-abc.fd",
		"-netdev user,id=vmnic-abc,hostfwd=tcp::6100-:7002",
		"-device virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=vmnic-abc,addr=0x2,romfile=",
		// no_timer_check: what a KVM guest assumes by itself, under TCG.
		"-kernel vmlinuz -append quiet console=null no_timer_check cvmd.x=1 -initrd initrd -nographic -monitor pty",
		"-fsdev local,id=cert_fs,path=" + dir + "/cert_fs,security_model=mapped -device virtio-9p-pci,fsdev=cert_fs,mount_tag=certs_share",
		"-fsdev local,id=env_fs,path=" + dir + "/env,security_model=mapped -device virtio-9p-pci,fsdev=env_fs,mount_tag=env_share",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("command line lacks %q:\n%s", want, got)
		}
	}
	for _, not := range []string{"restrict=on", "127.0.0.1", "-nodefaults", "virtio-rng"} {
		if strings.Contains(got, not) {
			t.Errorf("command line has %q, which the manager's has not:\n%s", not, got)
		}
	}
	if b, err := os.ReadFile(dir + "/OVMF_VARS-abc.fd"); err != nil || string(b) != "vars" {
		t.Errorf("variable store not copied: %q, %v", b, err)
	}
	if err := (&Config{Machine: MachineCocos}).checkCocos(); err == nil || !strings.Contains(err.Error(), "NetNS") {
		t.Errorf("MachineCocos without a network namespace: %v", err)
	}
	cfg.Accel = "kvm"
	if args, _ := cocosArgs(cfg); strings.Contains(strings.Join(args, " "), "no_timer_check") {
		t.Errorf("no_timer_check under KVM, which sets it itself")
	}
}

// A NetNS has its own loopback: a listener made in it is not reachable
// from the caller's namespace, and is from inside.
func TestNetNS(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (unshare CLONE_NEWNET)")
	}
	ns, err := NewNetNS()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("inside\n"))
			c.Close()
		}
	}()
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("the namespace's listener %s is reachable from outside it", ln.Addr())
	}
	var got string
	if err := ns.Do(func() error {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		got, err = bufio.NewReader(c).ReadString('\n')
		return err
	}); err != nil || got != "inside\n" {
		t.Fatalf("from inside: %q, %v", got, err)
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
