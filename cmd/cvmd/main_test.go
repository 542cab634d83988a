package main

import (
	"slices"
	"testing"
)

func TestKernelWords(t *testing.T) {
	cmds := commands()
	for _, tc := range []struct {
		args, want []string
	}{
		{[]string{"/init"}, nil},
		{[]string{"/init", "nokaslr"}, []string{"nokaslr"}},
		{[]string{"/init", "nokaslr", "quiet2"}, []string{"nokaslr", "quiet2"}},
		{[]string{"cvmd", "supervise", "--sealed"}, nil},
		{[]string{"cvmd", "agent"}, nil},
	} {
		if got := kernelWords(tc.args, cmds); !slices.Equal(got, tc.want) {
			t.Errorf("kernelWords(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}
