package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Scenarios.
const (
	ScenarioFaults  = "faults"  // random faults from the seed
	ScenarioRolling = "rolling" // every node drained and restarted in turn
)

// Options are the settings of one run.
type Options struct {
	Bin         string        // the gannet binary
	Scenario    string        // ScenarioFaults (default) or ScenarioRolling
	Seed        uint64        // chooses the faults, their targets and timing, and the clients' choices of node
	Duration    time.Duration // how long faults are injected (ScenarioFaults)
	Nodes       int           // cluster size (default 3)
	Publishers  int           // default 4: QoS 1 and 2 alternately
	Subscribers int           // default 4: QoS 1 and 2 alternately
	Rate        float64       // messages a second per publisher (default 40)
	Faults      []string      // fault kinds (default AllFaults)
	Dir         string        // where logs, data and the history go (default: a new temporary directory)
	Keep        bool          // keep Dir after a passing run (a failing one is always kept)
	LogLevel    string        // the nodes' --log-level (default info)
	Log         io.Writer     // progress lines; nil: none
}

func (o *Options) defaults() {
	if o.Scenario == "" {
		o.Scenario = ScenarioFaults
	}
	if o.Duration == 0 {
		o.Duration = 20 * time.Second
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Publishers == 0 {
		o.Publishers = 4
	}
	if o.Subscribers == 0 {
		o.Subscribers = 4
	}
	if o.Rate == 0 {
		o.Rate = 40
	}
	if len(o.Faults) == 0 {
		o.Faults = AllFaults
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
}

// Result is one run's outcome.
type Result struct {
	Scenario string
	Seed     uint64
	Duration time.Duration // of the fault window (or of the rolling restart)
	Took     time.Duration
	Faults   map[string]int // injected, by kind
	Kinds    []string       // the kinds that could be drawn
	Skipped  []string       // what could not run here, and why
	Crashes  int            // node exits the harness did not cause
	Report   *Report
	Err      string // the run could not finish
	Dir      string // logs (n1.log ...) and history.jsonl
}

// Pass reports whether the run finished and no guarantee was broken.
func (r *Result) Pass() bool { return r.Err == "" && r.Report != nil && r.Report.Pass() }

// Run runs one scenario and checks its history.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	if !slices.Contains([]string{ScenarioFaults, ScenarioRolling}, o.Scenario) {
		return nil, fmt.Errorf("unknown scenario %q: want %s or %s", o.Scenario, ScenarioFaults, ScenarioRolling)
	}
	for _, f := range o.Faults {
		if !slices.Contains(AllFaults, f) {
			return nil, fmt.Errorf("unknown fault %q: want some of %s", f, strings.Join(AllFaults, ", "))
		}
	}
	if o.Nodes < 2 {
		return nil, fmt.Errorf("a cluster needs at least 2 nodes, got %d", o.Nodes)
	}
	if _, err := os.Stat(o.Bin); err != nil {
		return nil, fmt.Errorf("no gannet binary at %q: %w", o.Bin, err)
	}
	dir := o.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "gannet-chaos-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	res := &Result{Scenario: o.Scenario, Seed: o.Seed, Faults: map[string]int{}, Kinds: o.Faults, Dir: dir}
	t0 := time.Now()
	err := run(ctx, o, res)
	res.Took = time.Since(t0)
	if err != nil {
		res.Err = err.Error()
	}
	if res.Pass() && !o.Keep && o.Dir == "" {
		_ = os.RemoveAll(dir)
		res.Dir = ""
	}
	return res, nil
}

// run is Run once the directory is there; what it returns is a run that
// could not finish, not a broken guarantee.
func run(ctx context.Context, o Options, res *Result) (err error) {
	hf, err := os.Create(filepath.Join(res.Dir, "history.jsonl"))
	if err != nil {
		return err
	}
	defer hf.Close()
	h := NewHistory(hf)
	defer func() { _ = h.Flush() }()
	logf := func(format string, args ...any) {
		_ = h.Flush()
		fmt.Fprintf(o.Log, "chaos seed=%d %6.1fs: %s\n", o.Seed, time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
	}
	wantDisk := o.Scenario == ScenarioFaults && slices.Contains(o.Faults, FaultDisk)
	c, skipped, err := newCluster(clusterConfig{bin: o.Bin, dir: res.Dir, nodes: o.Nodes, disk: wantDisk,
		extra: []string{"--log-level=" + o.LogLevel}}, h, o.Log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := c.close(); cerr != nil && err == nil {
			err = cerr
		}
		for _, n := range c.nodes {
			res.Crashes += n.crashes
		}
	}()
	kinds := o.Faults
	if skipped != "" {
		res.Skipped = append(res.Skipped, skipped)
		logf("%s", skipped)
		kinds = slices.DeleteFunc(slices.Clone(kinds), func(k string) bool { return k == FaultDisk })
	}
	if err := c.start(ctx); err != nil {
		return err
	}
	logf("%d nodes up", len(c.nodes))

	rng := rand.New(rand.NewPCG(o.Seed, 0x6368616f73)) // "chaos"
	w := newWorkload(c, h, o, rng)
	clientCtx, stopClients := context.WithCancel(ctx)
	var wg, pubs sync.WaitGroup
	// On any return the clients stop before the nodes do (defers run
	// last first).
	defer wg.Wait()
	defer pubs.Wait()
	defer stopClients()
	for _, s := range w.subs {
		wg.Go(func() { s.run(clientCtx) })
	}
	if err := w.probeAll(ctx, "start", 30*time.Second); err != nil {
		return fmt.Errorf("the subscribers' routes did not reach every node: %w", err)
	}
	pubCtx, stopPubs := context.WithCancel(clientCtx)
	defer stopPubs()
	for _, p := range w.pubs {
		pubs.Go(func() { p.run(pubCtx) })
	}
	logf("%d publishers, %d subscribers running", len(w.pubs), len(w.subs))

	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan []string, 1)
	go func() { sampled <- c.sampleDoubles(sampleCtx) }()

	spec := Spec{Seed: o.Seed, Pubs: map[string]byte{}, Subs: map[string]byte{}, Nodes: nodeNames(c.nodes)}
	for _, p := range w.pubs {
		spec.Pubs[p.id] = p.qos
	}
	for _, s := range w.subs {
		spec.Subs[s.id] = s.qos
	}
	tf := time.Now()
	switch o.Scenario {
	case ScenarioFaults:
		fctx, cancel := context.WithTimeout(ctx, o.Duration)
		in := &injector{c: c, rng: rand.New(rand.NewPCG(o.Seed, 0x6661756c74)), kinds: kinds, counts: res.Faults} // "fault"
		in.run(fctx)
		cancel()
	case ScenarioRolling:
		if spec.Restarts, err = rolling(ctx, c, logf); err != nil {
			stopSampling()
			<-sampled
			return err
		}
	}
	res.Duration = time.Since(tf)
	logf("faults over (%v); settling", faultSummary(res.Faults))

	c.healAll(ctx)
	if err := c.waitMesh(ctx, time.Minute); err != nil {
		stopSampling()
		<-sampled
		return fmt.Errorf("after the faults: %w", err)
	}
	stopSampling()
	spec.Doubles = <-sampled

	// Publishers finish what they sent, then stop.
	for _, p := range w.pubs {
		p.stop()
	}
	if !waitGroup(&pubs, time.Minute) {
		logf("publishers still had unfinished messages after a minute; stopping them")
		stopPubs()
		pubs.Wait()
	}
	w.waitDelivered(ctx, 30*time.Second, logf)
	spec.Collect = time.Since(h.start)
	h.Add(Op{Kind: OpNode, Note: "every subscriber reconnects once, to collect what waits elsewhere"})
	for _, s := range w.subs {
		s.reconnect()
	}
	w.waitDelivered(ctx, 30*time.Second, logf)
	if err := w.probeAll(ctx, "end", 30*time.Second); err != nil {
		logf("%v", err) // the checker names the routes that are missing
	}
	spec.Snapshot = c.snapshot(ctx)
	stopClients()
	wg.Wait()

	res.Report = Check(h.Ops(), spec)
	logf("checked: %s", res.Report.Summary())
	return nil
}

// waitGroup waits for wg at most limit; it reports whether wg finished.
func waitGroup(wg *sync.WaitGroup, limit time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}

// workload is the run's clients.
type workload struct {
	c    *cluster
	h    *History
	pubs []*publisher
	subs []*subscriber
}

func newWorkload(c *cluster, h *History, o Options, rng *rand.Rand) *workload {
	w := &workload{c: c, h: h}
	var targets []target
	for _, n := range c.nodes {
		targets = append(targets, target{name: n.name, addr: n.mqtt})
	}
	mk := func(id string, i int) base {
		return base{id: id, h: h, targets: targets, home: i % len(targets), rng: rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))}
	}
	for i := range o.Subscribers {
		w.subs = append(w.subs, newSubscriber(mk(fmt.Sprintf("s%d", i+1), i), byte(1+i%2)))
	}
	for i := range o.Publishers {
		// Publishers start on the node after their subscriber's, so
		// that most messages cross the interlink.
		w.pubs = append(w.pubs, newPublisher(mk(fmt.Sprintf("p%d", i+1), i+1), byte(1+i%2), o.Rate, 16))
	}
	return w
}

// missing counts (acknowledged message, subscriber) pairs not yet
// delivered.
func (w *workload) missing() int {
	acked := map[msgKey]bool{}
	got := map[string]map[msgKey]bool{}
	for _, o := range w.h.Ops() {
		switch {
		case o.Kind == OpAck && !strings.HasPrefix(o.Topic, "chaos/r/") && o.Topic != "":
			acked[msgKey{o.Pub, o.Seq}] = true
		case o.Kind == OpDeliver && o.Pub != "":
			if got[o.Client] == nil {
				got[o.Client] = map[msgKey]bool{}
			}
			got[o.Client][msgKey{o.Pub, o.Seq}] = true
		}
	}
	n := 0
	for _, s := range w.subs {
		for k := range acked {
			if !got[s.id][k] {
				n++
			}
		}
	}
	return n
}

// waitDelivered waits until every acknowledged message has reached every
// subscriber, or nothing more arrives for five seconds, or limit passes.
func (w *workload) waitDelivered(ctx context.Context, limit time.Duration, logf func(string, ...any)) {
	deadline := time.Now().Add(limit)
	var last int64 = -1
	still := time.Now()
	for ctx.Err() == nil && time.Now().Before(deadline) {
		m := w.missing()
		if m == 0 {
			return
		}
		var got int64
		for _, s := range w.subs {
			got += s.got.Load()
		}
		if got != last {
			last, still = got, time.Now()
		} else if time.Since(still) > 5*time.Second {
			logf("%d deliveries still missing, nothing arriving", m)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// probeAll publishes a QoS 1 probe on every node, again every 300 ms,
// until every subscriber has one from each: the routes of every
// subscriber have reached every node.
func (w *workload) probeAll(ctx context.Context, round string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, n := range w.c.nodes {
		c, _, err := dialMQTT(ctx, n.mqtt, connectOpts{id: "probe-" + n.name, keepAlive: 30, receiveMax: 100, timeout: dialTimeout})
		if err != nil {
			return fmt.Errorf("probe client on %s: %w", n.name, err)
		}
		note := "probe " + n.name + " " + round
		for {
			if err := c.send(probePublish(n.name, note)); err != nil {
				c.close()
				return fmt.Errorf("probe on %s: %w", n.name, err)
			}
			if w.probed(note) {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				c.close()
				return fmt.Errorf("probes published on %s did not reach every subscriber within %v", n.name, limit)
			}
			time.Sleep(300 * time.Millisecond)
		}
		c.close()
	}
	return nil
}

// probed reports whether every subscriber has received the probe note.
func (w *workload) probed(note string) bool {
	got := map[string]bool{}
	for _, o := range w.h.Ops() {
		if o.Kind == OpProbe && o.Note == note {
			got[o.Client] = true
		}
	}
	for _, s := range w.subs {
		if !got[s.id] {
			return false
		}
	}
	return true
}

// sampleDoubles lists the clients connected to each node every two
// seconds; a client two nodes list in two samples in a row is connected
// to both. Paused or stopped nodes are skipped.
func (c *cluster) sampleDoubles(ctx context.Context) []string {
	var found []string
	reported := map[string]bool{}
	prev := map[string]string{}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return found
		case <-t.C:
		}
		on := map[string][]string{}
		for _, n := range c.nodes {
			n.mu.Lock()
			paused := n.paused
			n.mu.Unlock()
			if paused || !n.running() {
				continue
			}
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			cs, err := c.api.clients(qctx, n)
			cancel()
			if err != nil {
				continue
			}
			for _, cl := range cs {
				if !strings.HasPrefix(cl.ClientID, "probe-") {
					on[cl.ClientID] = append(on[cl.ClientID], n.name)
				}
			}
		}
		cur := map[string]string{}
		for id, ns := range on {
			if len(ns) > 1 {
				sort.Strings(ns)
				cur[id] = strings.Join(ns, " and ")
				if prev[id] == cur[id] && !reported[id] {
					reported[id] = true
					found = append(found, fmt.Sprintf("%s was connected to %s in two samples 2 s apart (%s)", id, cur[id], time.Now().Format("15:04:05.000")))
				}
			}
		}
		prev = cur
	}
}

// faultSummary is "kill=3 pause=2 ...".
func faultSummary(m map[string]int) string {
	var b strings.Builder
	for _, k := range AllFaults {
		if m[k] > 0 {
			fmt.Fprintf(&b, "%s=%d ", k, m[k])
		}
	}
	if b.Len() == 0 {
		return "none"
	}
	return strings.TrimSpace(b.String())
}
