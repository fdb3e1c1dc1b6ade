package torture

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/gannetmq/gannet/bench"
)

// The hostile scenario's abusers run in a process of their own, apart
// from the well-behaved clients it measures. In production they would be
// other hosts; in one process with the measured clients, their thousands
// of goroutines and megabyte buffers would take the measured clients'
// scheduler and garbage collector with them, and the measured latency
// would be the load generator's as much as the broker's. The two
// processes still share this host's cores with the broker; AbuserNice
// lowers the abusers' CPU priority, the nearest this host comes to
// running them elsewhere.
//
// The process is the running executable (gannet-bench, or a test binary
// of this package) started again with abuserEnv set to its configuration
// in JSON: its main calls AbuserProcess first. It prints one JSON line
// when every hostile client is in place (abuserReport with Ready set),
// runs until its standard input closes (or a signal), stops them and
// prints its counts as a second line.

// abuserEnv carries the abuser process's configuration.
const abuserEnv = "GANNET_TORTURE_ABUSERS"

// abuserConfig is what the abuser process runs.
type abuserConfig struct {
	Addr      string   `json:"addr"`
	Abusers   []string `json:"abusers"`
	Idle      int      `json:"idle"`
	Copies    int      `json:"copies"`
	MaxPacket int      `json:"max_packet"`
}

// abuserReport is a line the abuser process prints.
type abuserReport struct {
	Ready bool   `json:"ready,omitempty"`
	Error string `json:"error,omitempty"`

	Subacks      int64  `json:"subacks"`
	Codes        string `json:"codes"` // of the first SUBACK
	BombDrops    int64  `json:"bomb_drops"`
	BigSent      int64  `json:"big_sent"`
	BigDrops     int64  `json:"big_drops"`
	FloodSent    int64  `json:"flood_sent"`
	FloodDrops   int64  `json:"flood_drops"`
	SilentClosed int64  `json:"silent_closed"`
	HalfClosed   int64  `json:"half_closed"`
	// CPU is the process's CPU time from ready to the end, over Took.
	CPU  time.Duration `json:"cpu_ns"`
	Took time.Duration `json:"took_ns"`
}

// AbuserProcess runs the hostile scenario's abusers when this process was
// started as their process, and reports its exit code and true; otherwise
// it returns false at once. Main functions that can run the hostile
// scenario call it first.
func AbuserProcess() (int, bool) {
	js, ok := os.LookupEnv(abuserEnv)
	if !ok {
		return 0, false
	}
	var cfg abuserConfig
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", abuserEnv, err)
		return 2, true
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { // the parent closes standard input, or dies
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	return runAbusers(ctx, cfg, os.Stdout), true
}

// runAbusers starts cfg's hostile clients, reports when they are in
// place, and stops them and reports their counts when ctx ends.
func runAbusers(ctx context.Context, cfg abuserConfig, out io.Writer) int {
	enc := json.NewEncoder(out)
	h := &hostiles{addr: cfg.Addr, abusers: cfg.Abusers, stop: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	defer h.end()
	if err := h.start(ctx, cfg.Idle, cfg.Copies, cfg.MaxPacket); err != nil {
		_ = enc.Encode(abuserReport{Error: err.Error()})
		return 1
	}
	cpu0, t0 := bench.SelfCPU(), time.Now()
	if enc.Encode(abuserReport{Ready: true}) != nil {
		return 1
	}
	<-ctx.Done()
	h.end()
	rep := abuserReport{
		Subacks: h.subacks.Load(), Codes: h.subackCodes(), BombDrops: h.bombDrops.Load(),
		BigSent: h.bigSent.Load(), BigDrops: h.bigDrops.Load(),
		FloodSent: h.floodSent.Load(), FloodDrops: h.floodDrops.Load(),
		SilentClosed: h.silentClosed.Load(), HalfClosed: h.halfClosed.Load(),
		CPU: bench.SelfCPU() - cpu0, Took: time.Since(t0),
	}
	if enc.Encode(rep) != nil {
		return 1
	}
	return 0
}

// abuserProc is the abuser process, seen from the scenario.
type abuserProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
	done  bool
}

// startAbusers starts the abuser process at CPU priority nice (0: as
// this process's) and returns once its hostile clients are in place.
func startAbusers(ctx context.Context, cfg abuserConfig, nice int) (*abuserProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if nice > 0 {
		// nice(1) rather than setpriority in the child: on Linux that
		// sets one thread's priority, and the Go runtime's others are
		// running by then.
		cmd = exec.Command("nice", "-n", strconv.Itoa(nice), exe)
	} else {
		cmd = exec.Command(exe)
	}
	cmd.Env = append(os.Environ(), abuserEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &abuserProc{cmd: cmd}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.lines = bufio.NewScanner(stdout)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the abuser process: %w", err)
	}
	stopOnCancel := context.AfterFunc(ctx, func() { _ = p.stdin.Close() })
	defer stopOnCancel()
	rep, err := p.read()
	switch {
	case err != nil:
	case rep.Error != "":
		err = errors.New(rep.Error)
	case !rep.Ready:
		err = errors.New("the abuser process said something other than ready")
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		p.done = true
		return nil, fmt.Errorf("abuser process: %w", err)
	}
	return p, nil
}

// read reads the process's next line.
func (p *abuserProc) read() (abuserReport, error) {
	var rep abuserReport
	if !p.lines.Scan() {
		if err := p.lines.Err(); err != nil {
			return rep, err
		}
		return rep, io.ErrUnexpectedEOF
	}
	return rep, json.Unmarshal(p.lines.Bytes(), &rep)
}

// end stops the abusers and returns their counts.
func (p *abuserProc) end() (abuserReport, error) {
	if p.done {
		return abuserReport{}, errors.New("abuser process already ended")
	}
	p.done = true
	_ = p.stdin.Close()
	rep, err := p.read()
	if werr := p.cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("abuser process: %w", werr)
	}
	return rep, err
}

// kill ends the process if end did not.
func (p *abuserProc) kill() {
	if !p.done {
		p.done = true
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}
