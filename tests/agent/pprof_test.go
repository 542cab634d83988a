package agent

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
)

// withPprof wraps a child helper so that, when CVMD_BENCH_PPROF names a
// directory, each SIGUSR1 toggles a CPU profile of the child into
// <dir>/<name>-<pid>-<n>.pprof: the benchmark profiles exactly the
// transfer it measures (the children are killed, not stopped, at the end).
func withPprof(name string, body func() int) func() int {
	return func() int {
		if d := os.Getenv("CVMD_BENCH_PPROF"); d != "" {
			ch := make(chan os.Signal, 1)
			signal.Notify(ch, syscall.SIGUSR1)
			go func() {
				for n := 0; ; n++ {
					<-ch
					f, err := os.Create(filepath.Join(d, fmt.Sprintf("%s-%d-%d.pprof", name, os.Getpid(), n)))
					if err != nil {
						continue
					}
					pprof.StartCPUProfile(f)
					<-ch
					pprof.StopCPUProfile()
					f.Close()
				}
			}()
		}
		return body()
	}
}

// togglePprof signals the processes to start or stop their profiles.
func togglePprof(pids ...int) {
	if os.Getenv("CVMD_BENCH_PPROF") == "" {
		return
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGUSR1)
	}
}
