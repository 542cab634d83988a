package supervisor

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cvmd/cvmd/sandbox"
	"github.com/cvmd/cvmd/supervisor/algosandbox"
)

func TestAlgoFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    algosandbox.Limits
		wantErr string
	}{
		{"defaults", nil, algosandbox.Limits{}, ""},
		{"all set", []string{"--algo-memory", "64MiB", "--algo-pids", "32", "--algo-cpu", "1.5", "--algo-timeout", "90s", "--algo-results-cap", "10M", "--algo-tmp", "4096"},
			algosandbox.Limits{MemoryBytes: 64 << 20, Pids: 32, CPUMillis: 1500, WallClock: 90 * time.Second, ResultsBytes: 10e6, TmpBytes: 4096}, ""},
		{"gibibytes", []string{"--algo-memory", "2GiB"}, algosandbox.Limits{MemoryBytes: 2 << 30}, ""},
		{"bad size", []string{"--algo-memory", "lots"}, algosandbox.Limits{}, "algo-memory"},
		{"negative size", []string{"--algo-results-cap", "-1"}, algosandbox.Limits{}, "algo-results-cap"},
		{"bad cpu", []string{"--algo-cpu", "-2"}, algosandbox.Limits{}, "algo-cpu"},
		{"negative pids", []string{"--algo-pids", "-1"}, algosandbox.Limits{}, "algo-pids"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			o, err := parseFlags(append([]string{"--dev", "--state", t.TempDir()}, tc.args...), &out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error()+out.String(), tc.wantErr) {
					t.Fatalf("err %v (%s), want it to name %s", err, out.String(), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.algo != tc.want {
				t.Fatalf("limits %+v, want %+v", o.algo, tc.want)
			}
		})
	}
}

func TestAlgoFlagsInHelp(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"-algo-memory", "-algo-pids", "-algo-cpu", "-algo-timeout", "-algo-results-cap", "-algo-tmp"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help does not document %s", f)
		}
	}
}

// The limits given to the supervisor are the algorithm sandboxes' maximums;
// fields left zero keep the package defaults.
func TestAlgoLimitsReachTheSandboxes(t *testing.T) {
	dir := t.TempDir()
	o, err := parseFlags([]string{"--dev", "--state", dir, "--algo-memory", "64MiB", "--algo-timeout", "1m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a, err := algosandbox.New(o.algoConfig(&sandbox.Runtime{}, storageOf(o.state, o.algo.ResultsBytes), nil, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if m := a.Max(); m.MemoryBytes != 64<<20 || m.WallClock != time.Minute || m.Pids != 256 || m.ResultsBytes != 512<<20 {
		t.Fatalf("sandbox maximums %+v", m)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "1", "64MiB", "2GiB", "10M", "1K", "x", "-1", "9223372036854775807", "9223372036854775807GiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		n, err := parseSize(v)
		if err == nil && n < 0 {
			t.Fatalf("parseSize(%q) = %d", v, n)
		}
	})
}

// --standby-after changes the table that is printed and measured; 0 builds
// no standby, and an unset flag keeps the table's value.
func TestStandbyAfterFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    time.Duration
		wantErr bool
	}{
		{nil, time.Second, false},
		{[]string{"--standby-after", "0"}, 0, false},
		{[]string{"--standby-after", "250ms"}, 250 * time.Millisecond, false},
		{[]string{"--standby-after", "-1s"}, 0, true},
		{[]string{"--standby-after", "soon"}, 0, true},
	} {
		var out bytes.Buffer
		o, err := parseFlags(append([]string{"--dev", "--state", t.TempDir()}, tc.args...), &out)
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error()+out.String(), "standby-after") {
				t.Errorf("%v: err %v (%s), want a refusal naming the flag", tc.args, err, out.String())
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := o.table().StandbyAfter; got != tc.want {
			t.Errorf("%v: table's standby_after %v, want %v", tc.args, got, tc.want)
		}
	}
}
