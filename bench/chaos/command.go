package chaos

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Command is `gannet-bench chaos`: it runs the scenario once per seed
// (-seed, then -runs-1 more seeds counting up; or seeds one after another
// until -duration is spent when -runs is 0 and -each is set), prints each
// result and a table, and returns the exit code: 2 for bad arguments, 1
// when a run broke a guarantee or could not finish, 0 otherwise.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gannet-bench chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: gannet-bench chaos [flags]

Starts a cluster of real gannet processes behind interlink proxies, runs
persistent publishers and subscribers over its nodes, injects faults chosen
from the seed (kill -9 and restart, SIGSTOP/SIGCONT longer than the failure
timeout, interlink links cut or delayed, a full disk), lets the cluster
settle and checks the recorded history: no acknowledged QoS 1/2 message
lost, QoS 2 exactly once, per-publisher order, retained messages and routes
converged, no client on two nodes. -scenario rolling drains and restarts
every node in turn instead. A failure prints the seed and the operations
around it; the logs and the history stay in the run's directory.

Flags:
`)
		fs.PrintDefaults()
	}
	var o Options
	var faults string
	var runs int
	var each time.Duration
	var asJSON, quiet bool
	fs.StringVar(&o.Bin, "bin", "", "the gannet `binary` (default: bin/gannet, or gannet on PATH)")
	fs.StringVar(&o.Scenario, "scenario", ScenarioFaults, "faults (random faults from the seed) or rolling (drain and restart every node in turn)")
	fs.Uint64Var(&o.Seed, "seed", uint64(time.Now().UnixNano()%1_000_000), "the first run's `seed`")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "total time of fault injection (split over the runs when -each is set)")
	fs.DurationVar(&each, "each", 0, "split -duration into runs of this long each, with seeds counting up from -seed (0: one run)")
	fs.IntVar(&runs, "runs", 1, "with -each 0: this many runs of -duration, seeds counting up")
	fs.IntVar(&o.Nodes, "nodes", 3, "cluster `size`")
	fs.IntVar(&o.Publishers, "publishers", 4, "publishing clients, QoS 1 and 2 alternately")
	fs.IntVar(&o.Subscribers, "subscribers", 4, "subscribing clients, QoS 1 and 2 alternately")
	fs.Float64Var(&o.Rate, "rate", 40, "messages a second per publisher")
	fs.StringVar(&faults, "faults", strings.Join(AllFaults, ","), "fault kinds to inject, comma-separated: "+strings.Join(AllFaults, ", "))
	fs.StringVar(&o.Dir, "dir", "", "`directory` for each run's logs, data and history (a subdirectory per seed; default: temporary, removed after a pass)")
	fs.StringVar(&o.LogLevel, "log-level", "info", "the nodes' --log-level: debug, info, warn or error")
	fs.BoolVar(&asJSON, "json", false, "print the results as JSON")
	fs.BoolVar(&quiet, "q", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gannet-bench chaos: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	o.Faults = strings.Split(faults, ",")
	if o.Bin == "" {
		o.Bin = defaultBin()
	}
	if !quiet {
		o.Log = stderr
	}
	plan := []time.Duration{o.Duration}
	switch {
	case each > 0:
		plan = nil
		for left := o.Duration; left > 0; left -= each {
			plan = append(plan, min(each, left))
		}
	case runs > 1:
		plan = nil
		for range runs {
			plan = append(plan, o.Duration)
		}
	}
	base, seed0 := o.Dir, o.Seed
	var results []*Result
	code := 0
	for i, d := range plan {
		ro := o
		ro.Seed, ro.Duration = seed0+uint64(i), d
		if base != "" {
			ro.Dir = fmt.Sprintf("%s/%s-%d", base, ro.Scenario, ro.Seed)
		}
		res, err := Run(ctx, ro)
		if err != nil {
			fmt.Fprintf(stderr, "gannet-bench chaos: %v\n", err)
			return 2
		}
		results = append(results, res)
		if !asJSON {
			res.Print(stdout)
		}
		if !res.Pass() {
			code = 1
		}
		if ctx.Err() != nil {
			break
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(results)
		return code
	}
	fmt.Fprintln(stdout)
	Table(stdout, results)
	return code
}

// defaultBin finds the broker's binary where it usually is.
func defaultBin() string {
	if _, err := os.Stat("bin/gannet"); err == nil {
		return "bin/gannet"
	}
	if p, err := exec.LookPath("gannet"); err == nil {
		return p
	}
	return "bin/gannet"
}
