package torture

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Command is `gannet-bench torture`: it parses args, runs the scenarios
// named (or all) and prints each result, then a summary. It returns the
// exit code: 2 for bad arguments, 1 when Gannet failed a scenario, 0
// otherwise. Mosquitto's failures are the comparison and do not change
// the exit code.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gannet-bench torture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: gannet-bench torture [flags] scenario...|all

Each scenario starts the broker afresh (random loopback ports, a temporary
data directory), applies one kind of abuse and prints its figures and
pass/fail conditions. Without -full each runs scaled down to seconds.

Scenarios:
`)
		for _, s := range scenarios {
			fmt.Fprintf(stderr, "  %-10s %s\n", s.name, s.about)
		}
		fmt.Fprintf(stderr, "\nFlags:\n")
		fs.PrintDefaults()
	}
	var opts Options
	var asJSON, quiet bool
	fs.StringVar(&opts.Broker, "broker", Gannet, "broker under test: gannet or mosquitto (configured with the nearest equivalents of Gannet's limits)")
	fs.BoolVar(&opts.Full, "full", false, "run the full sizes (10,000 clients, up to a few minutes a scenario) instead of the short form")
	fs.StringVar(&opts.Bin, "bin", "", "the broker's `binary` (default: bin/gannet, or gannet on PATH; mosquitto on PATH, or /usr/sbin/mosquitto)")
	abusers := fs.String("abusers", strings.Join(Abusers, ","), "the hostile scenario's kinds of hostile client, comma-separated: a subset of "+strings.Join(Abusers, ", "))
	fs.IntVar(&opts.AbuserNice, "abusers-nice", 0, "run the hostile scenario's hostile clients (a process of their own) at this CPU priority, 1 to 19: the nearest this host comes to running them on other machines")
	fs.StringVar(&opts.TempDir, "tmp", "", "`directory` for the brokers' data (default: the system's temporary directory)")
	fs.BoolVar(&asJSON, "json", false, "print the results as JSON instead of tables")
	fs.BoolVar(&quiet, "q", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if opts.Broker != Gannet && opts.Broker != Mosquitto {
		fmt.Fprintf(stderr, "gannet-bench torture: -broker must be gannet or mosquitto, got %q\n", opts.Broker)
		return 2
	}
	if opts.AbuserNice < 0 || opts.AbuserNice > 19 {
		fmt.Fprintf(stderr, "gannet-bench torture: -abusers-nice must be 0 to 19, got %d\n", opts.AbuserNice)
		return 2
	}
	for _, a := range strings.Split(*abusers, ",") {
		if !slices.Contains(Abusers, a) {
			fmt.Fprintf(stderr, "gannet-bench torture: unknown hostile client %q in -abusers: want some of %s\n", a, strings.Join(Abusers, ", "))
			return 2
		}
		opts.Abusers = append(opts.Abusers, a)
	}
	names := fs.Args()
	if len(names) == 0 {
		fmt.Fprintln(stderr, "gannet-bench torture: name the scenarios to run, or all")
		fs.Usage()
		return 2
	}
	if slices.Contains(names, "all") {
		names = Scenarios()
	}
	for _, n := range names {
		if !slices.Contains(Scenarios(), n) {
			fmt.Fprintf(stderr, "gannet-bench torture: unknown scenario %q: want one of %s, or all\n", n, strings.Join(Scenarios(), ", "))
			return 2
		}
	}
	if opts.Bin == "" {
		opts.Bin = defaultBin(opts.Broker)
	}
	if _, err := os.Stat(opts.Bin); err != nil {
		fmt.Fprintf(stderr, "gannet-bench torture: no %s binary at %q (build it, or give -bin): %v\n", opts.Broker, opts.Bin, err)
		return 2
	}
	if !quiet {
		opts.Log = stderr
	}
	var results []*Result
	code := 0
	for _, n := range names {
		res, err := Run(ctx, opts, n)
		if err != nil {
			fmt.Fprintf(stderr, "gannet-bench torture: %v\n", err)
			return 2
		}
		results = append(results, res)
		if !asJSON {
			res.Print(stdout)
			fmt.Fprintln(stdout)
		}
		if !res.Pass && opts.Broker == Gannet {
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
	Summary(stdout, results)
	return code
}

// Summary prints one Markdown row per result.
func Summary(w io.Writer, results []*Result) {
	fmt.Fprintln(w, "| scenario | broker | form | result | took | conditions not met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range results {
		form, verdict := "short", "PASS"
		if r.Full {
			form = "full"
		}
		if !r.Pass {
			verdict = "FAIL"
		}
		failed := strings.Join(r.Failed(), "; ")
		if failed == "" {
			failed = "-"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %v | %s |\n", r.Scenario, r.Broker, form, verdict, r.Took.Round(time.Second), failed)
	}
}

// defaultBin finds the broker's binary where it usually is.
func defaultBin(kind string) string {
	if kind == Gannet {
		if _, err := os.Stat("bin/gannet"); err == nil {
			return "bin/gannet"
		}
		if p, err := exec.LookPath("gannet"); err == nil {
			return p
		}
		return "bin/gannet"
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	return "/usr/sbin/mosquitto"
}
