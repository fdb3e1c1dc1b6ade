package main

import (
	"os"
	"runtime"
)

// The event loops and the Go scheduler.
//
// gnet's event loops are goroutines that wait for I/O in epoll_wait, a
// blocking system call, and a goroutine in a system call keeps its
// processor (P). With one P per CPU and a loop per CPU, plus the loop that
// accepts connections, there are more loops than Ps: a loop that wakes
// finds every P held by a sleeping one and waits for the runtime's
// monitor to take a P back (it looks every 20 µs while this goes on),
// which costs thread wake-ups and context switches on every connection:
// about 40 µs of CPU per CONNECT on two cores (BENCHMARKS.md, "Connection
// rate"). So the broker runs with at least a P for each loop and one for
// the accepting loop. Not more: a P left idle while the loops are busy
// has threads spinning to look for work for it, which cost about 15%
// more CPU per message under a steady publish load.

// procsFor returns the GOMAXPROCS the broker runs with: procs (the
// runtime's own choice, one per CPU the process may use), or one more
// than the event loops (loops, 0 for one per CPU) when that is more. A
// GOMAXPROCS set in the environment (env) is kept as it is: 0.
func procsFor(env string, procs, loops int) int {
	if env != "" {
		return 0
	}
	if loops == 0 {
		loops = runtime.NumCPU() // as the server counts them
	}
	return max(procs, loops+1)
}

// defaultProcs is the runtime's GOMAXPROCS when the process started.
var defaultProcs = runtime.GOMAXPROCS(0)

// setProcs sets GOMAXPROCS for a broker with loops event loops, unless
// the environment sets it.
func setProcs(loops int) {
	if n := procsFor(os.Getenv("GOMAXPROCS"), defaultProcs, loops); n > 0 {
		runtime.GOMAXPROCS(n)
	}
}
