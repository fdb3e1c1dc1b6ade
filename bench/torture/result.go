package torture

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Options say what a run tortures and how hard.
type Options struct {
	Broker string // Gannet or Mosquitto
	Bin    string // the broker's binary
	// Full runs the sizes of the issue (10,000 clients, minutes);
	// otherwise each scenario runs scaled down to seconds.
	Full bool
	// TempDir holds the brokers' data directories; "": the system's.
	TempDir string
	// Log gets a line at each step; nil: none.
	Log io.Writer
	// Abusers names the hostile scenario's kinds of hostile client to
	// run, a subset of Abusers; nil: all of them.
	Abusers []string
	// AbuserNice is the CPU priority (nice) of the hostile scenario's
	// abuser process; 0 runs it at this process's (abusers.go).
	AbuserNice int
}

// Abusers are the kinds of hostile client of the hostile scenario: the
// huge SUBSCRIBE, the maximum-size PUBLISHes, the flooder, and the silent
// and half-CONNECT connections.
var Abusers = []string{"subscribe", "big", "flood", "idle"}

// Result is what one scenario measured and whether the broker passed.
type Result struct {
	Scenario string        `json:"scenario"`
	Broker   string        `json:"broker"`
	Full     bool          `json:"full"`
	Took     time.Duration `json:"took_ns"`
	Pass     bool          `json:"pass"`
	// Err says why the scenario could not run to its end; the run then
	// fails.
	Err     string   `json:"error,omitempty"`
	Limits  string   `json:"limits"`
	Figures []Figure `json:"figures"`
	Checks  []Check  `json:"checks"`
}

// Figure is one measured value, formatted.
type Figure struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Check is one pass condition. A check that is not Enforced is reported
// only (see checkFull).
type Check struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Enforced bool   `json:"enforced"`
	Detail   string `json:"detail"`
}

func (r *Result) fig(name, format string, args ...any) {
	r.Figures = append(r.Figures, Figure{name, fmt.Sprintf(format, args...)})
}

// check records an enforced pass condition.
func (r *Result) check(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{name, ok, true, fmt.Sprintf(format, args...)})
}

// checkFull records a pass condition enforced in the full form only:
// latency ratios, which a few seconds on a shared machine cannot measure
// steadily, and memory ratios, which mean something only at full size.
func (r *Result) checkFull(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{name, ok, r.Full, fmt.Sprintf(format, args...)})
}

// Failed lists the enforced conditions that were not met.
func (r *Result) Failed() []string {
	var f []string
	if r.Err != "" {
		f = append(f, r.Err)
	}
	for _, c := range r.Checks {
		if c.Enforced && !c.OK {
			f = append(f, c.Name+": "+c.Detail)
		}
	}
	return f
}

// Print writes the result as a table.
func (r *Result) Print(w io.Writer) {
	form := "short"
	if r.Full {
		form = "full"
	}
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "== %s on %s, %s form: %s (%v)\n", r.Scenario, r.Broker, form, verdict, r.Took.Round(time.Millisecond))
	if r.Limits != "" {
		fmt.Fprintf(w, "   limits: %s\n", r.Limits)
	}
	width := 0
	for _, f := range r.Figures {
		width = max(width, len(f.Name))
	}
	for _, f := range r.Figures {
		fmt.Fprintf(w, "   %-*s  %s\n", width, f.Name, f.Value)
	}
	for _, c := range r.Checks {
		mark := "PASS"
		switch {
		case !c.OK && c.Enforced:
			mark = "FAIL"
		case !c.OK:
			mark = "miss"
		}
		note := ""
		if !c.Enforced {
			note = " (reported, not enforced in the short form)"
		}
		fmt.Fprintf(w, "   [%s] %s: %s%s\n", mark, c.Name, c.Detail, note)
	}
	if r.Err != "" {
		fmt.Fprintf(w, "   [FAIL] could not finish: %s\n", r.Err)
	}
}

// scenario is one kind of abuse.
type scenario struct {
	name  string
	about string
	run   func(ctx context.Context, e *env) error
}

// scenarios in the order.
var scenarios = []scenario{
	{"reconnect", "reconnect storm: persistent QoS 1 subscribers, the broker killed (-9) and restarted, all back at once", reconnectStorm},
	{"offline", "offline flood: persistent sessions offline while messages pile up for them, 10% back under new ids per cycle", offlineFlood},
	{"slow", "slow consumers: one publisher to many subscribers, a few reading 10 messages/s and one not reading at all", slowConsumers},
	{"retained", "retained storm: many retained messages, many subscribers to dev/+/state at once, one unrelated SUBSCRIBE", retainedStorm},
	{"hostile", "hostile clients: a 100,000-filter SUBSCRIBE, maximum-size packets, silent and half CONNECTs, a flooder", hostileClients},
}

// Scenarios lists the scenario names in order.
func Scenarios() []string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return names
}

// env is what a running scenario works with.
type env struct {
	opts Options
	res  *Result
	// brokers started, closed at the end
	brokers []*Broker
}

func (e *env) logf(format string, args ...any) {
	if e.opts.Log != nil {
		fmt.Fprintf(e.opts.Log, "%s %s: "+format+"\n", append([]any{time.Now().Format("15:04:05"), e.res.Scenario}, args...)...)
	}
}

// size picks the short or the full form's value.
func size[T any](e *env, short, full T) T {
	if e.opts.Full {
		return full
	}
	return short
}

// gannet reports whether the broker under test is Gannet.
func (e *env) gannet() bool { return e.opts.Broker == Gannet }

// start starts the broker under test with limits l (and more Gannet
// flags), to be stopped when the scenario ends.
func (e *env) start(ctx context.Context, l Limits, extra ...string) (*Broker, error) {
	b, err := startBroker(ctx, e.opts.Broker, e.opts.Bin, e.opts.TempDir, l, extra...)
	if err != nil {
		return nil, err
	}
	e.brokers = append(e.brokers, b)
	if e.gannet() {
		e.res.Limits = strings.Join(append(l.gannetArgs(), extra...), " ")
	} else {
		e.res.Limits = limitsLine(l)
	}
	return b, nil
}

// limitsLine names Mosquitto's settings of l, as its configuration says.
func limitsLine(l Limits) string {
	_, p, _ := strings.Cut(l.mosquittoConf(0, "DIR"), "set_tcp_nodelay true\n")
	p = strings.TrimSuffix(p, "\n")
	p = strings.ReplaceAll(p, "listener 0 127.0.0.1\n", "")
	return strings.ReplaceAll(p, "\n", "; ")
}

// Run runs the scenario called name and returns what it measured. An
// error is returned only for a name that is not a scenario or bad
// options; a scenario that cannot finish is a failed Result.
func Run(ctx context.Context, opts Options, name string) (*Result, error) {
	if opts.Broker != Gannet && opts.Broker != Mosquitto {
		return nil, fmt.Errorf("unknown broker %q: want gannet or mosquitto", opts.Broker)
	}
	if opts.Bin == "" {
		return nil, fmt.Errorf("no broker binary given")
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	for _, s := range scenarios {
		if s.name != name {
			continue
		}
		e := &env{opts: opts, res: &Result{Scenario: name, Broker: opts.Broker, Full: opts.Full}}
		t0 := time.Now()
		err := s.run(ctx, e)
		for _, b := range e.brokers {
			if err != nil && e.opts.Log != nil {
				if tail := lastLines(b.Stderr(), 10); tail != "" {
					e.logf("broker's last words:\n%s", tail)
				}
			}
			b.Close()
		}
		r := e.res
		r.Took = time.Since(t0)
		if err != nil {
			r.Err = err.Error()
		}
		r.Pass = len(r.Failed()) == 0
		return r, nil
	}
	return nil, fmt.Errorf("unknown scenario %q: want one of %s, or all", name, strings.Join(Scenarios(), ", "))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
