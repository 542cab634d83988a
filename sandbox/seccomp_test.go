package sandbox

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// socketTypes are tried for every family: a family is refused only if all
// of them are.
var socketTypes = []struct {
	name string
	typ  int
}{{"stream", unix.SOCK_STREAM}, {"dgram", unix.SOCK_DGRAM}, {"seqpacket", unix.SOCK_SEQPACKET}, {"raw", unix.SOCK_RAW}}

// probeFamilies runs inside a sandbox: for every address family, one line
// "socket <AF> <type> <result>" per type and "socketpair <AF> <result>",
// then the narrowed calls of the untrusted profile.
func probeFamilies() {
	res := func(err error) string {
		if err == nil {
			return "ok"
		}
		return fmt.Sprintf("%d", err.(unix.Errno))
	}
	for _, f := range SocketFamilies {
		for _, st := range socketTypes {
			fd, err := unix.Socket(f.Number, st.typ|unix.SOCK_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			fmt.Printf("socket %s %s %s\n", f.Name, st.name, res(err))
		}
		fds, err := unix.Socketpair(f.Number, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
		fmt.Printf("socketpair %s %s\n", f.Name, res(err))
	}
	// A family with high bits set is still the family to the kernel.
	_, _, e := unix.RawSyscall(unix.SYS_SOCKET, 1<<32|40, unix.SOCK_STREAM, 0)
	fmt.Printf("socket-highbits AF_VSOCK %s\n", res(errnoErr(e)))
	var p [2]int
	unix.Pipe2(p[:], unix.O_CLOEXEC)
	_, err := unix.IoctlGetTermios(p[0], unix.TCGETS)
	fmt.Printf("ioctl TCGETS %s\n", res(err))
	if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0); err == nil {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGIFCONF, 0)
		fmt.Printf("ioctl SIOCGIFCONF %s\n", res(errnoErr(e)))
	}
	_, err = unix.MemfdCreate("x", unix.MFD_CLOEXEC)
	fmt.Printf("memfd_create - %s\n", res(err))
	_, _, e = unix.Syscall(unix.SYS_PIDFD_GETFD, ^uintptr(0), 0, 0)
	fmt.Printf("pidfd_getfd - %s\n", res(errnoErr(e)))
}

// TestProfilesValidate: every profile of this package is unambiguous, and
// the printed (hashed) form names the families.
func TestProfilesValidate(t *testing.T) {
	for _, p := range []*Profile{FDOnlyProfile(), NetworkProfile(), UntrustedProfile(), AlgorithmProfile()} {
		if err := p.Validate(); err != nil {
			t.Error(err)
		}
		b, _ := json.Marshal(p)
		if !strings.Contains(string(b), `"socket_families":`) || !strings.Contains(string(b), `"socketpair_families":["AF_UNIX"]`) {
			t.Errorf("%s: printed profile lacks the family rules: %s", p.Name, b)
		}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Profile)
		want string
	}{
		{"socket in allow", func(p *Profile) { p.Allow = append(p.Allow, "socket") }, "per address family"},
		{"socketpair in allow", func(p *Profile) { p.Allow = append(p.Allow, "socketpair") }, "per address family"},
		{"unknown family", func(p *Profile) { p.SocketFamilies = []string{"AF_NOPE"} }, "unknown address family"},
		{"denied and allowed", func(p *Profile) { p.Deny = append(p.Deny, "socket") }, "both denied"},
		{"ioctl twice", func(p *Profile) { p.Allow = append(p.Allow, "ioctl") }, "ioctl both"},
		{"unknown ioctl", func(p *Profile) { p.Ioctls = []string{"TIOCSTI"} }, "unknown ioctl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := UntrustedProfile()
			tc.mod(p)
			if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			s := Spec{ID: "x", Args: []string{"/x"}, Seccomp: p}
			if _, err := s.Config(ConfigOptions{Skeleton: "/s"}); err == nil {
				t.Fatal("Config accepted an invalid profile")
			}
		})
	}
}

// TestSeccompSocketFamilies tries socket(2) and socketpair(2) for every
// address family Linux has, in a real sandbox under each profile: a family
// the profile does not name fails with EPERM whatever the socket type; a
// named one gets past the filter for some type.
func TestSeccompSocketFamilies(t *testing.T) {
	requireRoot(t)
	rt := newRuntime(t)
	eperm := fmt.Sprintf("%d", unix.EPERM)
	for _, prof := range []*Profile{FDOnlyProfile(), NetworkProfile(), AlgorithmProfile()} {
		t.Run(prof.Name, func(t *testing.T) {
			s := testSpec("fam-"+prof.Name, "probe", "families")
			s.Seccomp = prof
			out, st, _ := run(t, rt, s)
			if !st.Success() {
				t.Fatalf("probe failed: %v\n%s", st, out)
			}
			got := map[string][]string{} // "socket AF_X" → results
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(l)
				if len(f) < 3 {
					continue
				}
				k := f[0] + " " + f[1]
				got[k] = append(got[k], f[len(f)-1])
			}
			for _, f := range SocketFamilies {
				for _, c := range []struct {
					call    string
					allowed []string
				}{{"socket", prof.SocketFamilies}, {"socketpair", prof.SocketpairFamilies}} {
					r := got[c.call+" "+f.Name]
					if len(r) == 0 {
						t.Fatalf("no result for %s %s in:\n%s", c.call, f.Name, out)
					}
					refused := !slices.ContainsFunc(r, func(v string) bool { return v != eperm })
					if want := !slices.Contains(c.allowed, f.Name); refused != want {
						t.Errorf("%s(%s): results %v; refused %v, want %v", c.call, f.Name, r, refused, want)
					}
				}
			}
			if r := got["socket-highbits AF_VSOCK"]; len(r) != 1 || r[0] != eperm {
				t.Errorf("socket(1<<32|AF_VSOCK): %v, want EPERM", r)
			}
			if prof.Name != "algorithm" {
				return
			}
			for k, want := range map[string]string{
				"ioctl TCGETS":      fmt.Sprintf("%d", unix.ENOTTY), // allowed: the kernel answers
				"ioctl SIOCGIFCONF": eperm,
				"memfd_create -":    eperm,
				"pidfd_getfd -":     eperm,
			} {
				if r := got[k]; len(r) != 1 || r[0] != want {
					t.Errorf("%s: %v, want %s", k, r, want)
				}
			}
		})
	}
}

func TestSocketFamiliesCoverAFMax(t *testing.T) {
	if len(SocketFamilies) != unix.AF_MAX {
		t.Fatalf("%d families listed, the kernel has %d (AF_MAX): add the new ones", len(SocketFamilies), unix.AF_MAX)
	}
	for i, f := range SocketFamilies {
		if f.Number != i {
			t.Fatalf("family %s has number %d at index %d", f.Name, f.Number, i)
		}
	}
}
