package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the kernel's USER_HZ: /proc/<pid>/stat counts CPU time in
// these units. It is 100 on every Linux architecture Go supports.
const clockTick = 100

// ProcSample is what /proc says about a process at one moment.
type ProcSample struct {
	CPU  time.Duration // user + system
	RSS  int64         // resident set size, bytes
	Peak int64         // peak resident set size (VmHWM), bytes
}

// SampleProc reads the CPU time and memory of process pid.
func SampleProc(pid int) (ProcSample, error) {
	var s ProcSample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("cannot read broker CPU time: %w", err)
	}
	// The command name may hold spaces; fields count from after its ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return s, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(ut+st) * time.Second / clockTick
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("cannot read broker memory: %w", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := sc.Text()
		kb := func() int64 {
			v, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return v << 10
		}
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			s.RSS = kb()
		case strings.HasPrefix(line, "VmHWM:"):
			s.Peak = kb()
		}
	}
	return s, sc.Err()
}

// SelfCPU is this process's user + system CPU time.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
