package torture

import (
	"context"
	"fmt"
	"time"

	"github.com/gannetmq/gannet/bench"
	"github.com/gannetmq/gannet/codec"
)

// slowConsumers: one publisher to many subscribers (bench's fanout
// scenario, which measures their latency), run twice on one broker:
// alone, then with a few more subscribers to the same topic that read 10
// messages a second, and one that reads nothing at all after its SUBACK
// (a client that never reads looks to the broker just like one stopped
// with SIGSTOP). Both kinds have a small receive buffer (4 KiB), so the
// backlog stays in the broker rather than in the kernel.
//
// Pass: the stopped subscriber is cut off, and (Gannet) the cut-off
// counted (gannet_slow_receivers_closed_total); the broker's memory
// grows by no more than twice the outbound high-water mark per slow
// subscriber, plus 32 MiB; the normal subscribers' p99 latency at most
// twice the figure without the slow ones (full form only).
func slowConsumers(ctx context.Context, e *env) error {
	r := e.res
	subs := size(e, 50, 1000)
	slow := size(e, 3, 10)
	rate := size(e, 200, 100)
	// The kernel takes up to tcp_wmem's maximum (4 MiB by default) of a
	// stopped reader's backlog before the broker holds any of it: the
	// payloads are large enough to fill that within the run.
	payload := size(e, 8<<10, 2<<10)
	window := size(e, 3*time.Second, 30*time.Second)
	highWater := size(e, int64(64<<10), int64(512<<10))
	l := Limits{OutboundHighWater: highWater, SlowTimeout: size(e, time.Second, 5*time.Second),
		MemoryLimit: size(e, int64(512<<20), int64(1<<30)), MaxConnections: subs + slow + 100}
	b, err := e.start(ctx, l)
	if err != nil {
		return err
	}
	r.fig("fan-out", "1 publisher, %d QoS 0 messages/s of %d B, to %d subscribers; %v measured per run", rate, payload, subs, window)
	r.fig("slow ones", "%d reading 10 messages/s, 1 reading nothing; 4 KiB receive buffers", slow)
	watch := watchRSS(b, 50*time.Millisecond)
	defer watch.stopOnce()
	fanout := func() (*bench.Result, time.Time, time.Time, error) {
		t0 := time.Now()
		res, err := bench.Run(ctx, bench.Config{Scenario: "fanout", Addr: b.Addr, Publishers: 1, Subscribers: subs,
			Payload: payload, Rate: rate, Duration: window, Warmup: time.Second, Drain: 5 * time.Second, BrokerPID: b.PID()})
		return res, t0, time.Now(), err
	}

	e.logf("fan-out to %d subscribers, alone", subs)
	quiet, q0, q1, err := fanout()
	if err != nil {
		return fmt.Errorf("quiet run: %w", err)
	}
	quietPeak := watch.peakBetween(q0, q1)

	e.logf("%d slow subscribers and a stopped one join", slow)
	// release ends the paced readers, which wait in pace rather than in
	// a read that closing would end.
	release := make(chan struct{})
	// drain lets them read as fast as they can, to find out whether the
	// broker cut them off.
	drain := make(chan struct{})
	var slowOnes []*client
	var stopped *client
	defer func() {
		close(release)
		closeAll(append(slowOnes, stopped))
	}()
	for i := range slow {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		c, _, err := connect(ctx, b.Addr, clientConfig{id: fmt.Sprintf("slow-%d", i), cleanStart: true, rcvBuf: 4096, inflight: 1})
		if err != nil {
			return err
		}
		c.pace = func() bool {
			select {
			case <-tick.C:
				return true
			case <-drain:
				return true
			case <-release:
				return false
			}
		}
		slowOnes = append(slowOnes, c)
		c.serve()
		if _, err := c.subscribe(ctx, codec.Subscription{Filter: []byte("bench/fanout")}); err != nil {
			return err
		}
	}
	stopped, _, err = connect(ctx, b.Addr, clientConfig{id: "stopped", cleanStart: true, rcvBuf: 4096, inflight: 1})
	if err != nil {
		return err
	}
	// It reads its SUBACK, then nothing until the scenario ends.
	subacked := false
	stopped.onPublish = func(*codec.Publish) {}
	stopped.pace = func() bool {
		if !subacked {
			subacked = true
			return true
		}
		select {
		case <-drain:
			return true
		case <-release:
			return false
		}
	}
	stopped.serve()
	if _, err := stopped.subscribe(ctx, codec.Subscription{Filter: []byte("bench/fanout")}); err != nil {
		return err
	}
	closedBefore := b.metric(ctx, "gannet_slow_receivers_closed_total")

	e.logf("fan-out to %d subscribers with the slow ones", subs)
	loaded, l0, l1, err := fanout()
	if err != nil {
		return fmt.Errorf("run with slow subscribers: %w", err)
	}
	loadedPeak := watch.peakBetween(l0, l1)

	// A connection the broker cut off ends once its client reads what
	// the kernel holds; one it did not stays open.
	close(drain)
	cutErr := poll(ctx, l.SlowTimeout+10*time.Second, stopped.closed)
	slowCut := 0
	for _, c := range slowOnes {
		if poll(ctx, time.Second, c.closed) == nil {
			slowCut++
		}
	}
	m, _ := b.Metrics(ctx)

	r.fig("normal subscribers alone", "p50 %s, p99 %s, %.0f received/s, %d lost", ms(quiet.P50), ms(quiet.P99), quiet.RecvRate, quiet.Lost)
	r.fig("normal subscribers with slow ones", "p50 %s, p99 %s, %.0f received/s, %d lost", ms(loaded.P50), ms(loaded.P99), loaded.RecvRate, loaded.Lost)
	r.fig("CPU alone / with slow ones", "broker %s / %s, %s %s / %s",
		cpuShare(quiet), cpuShare(loaded), "this process (every subscriber)", toolShare(quiet), toolShare(loaded))
	r.fig("slow readers cut off", "%d of %d", slowCut, slow)
	bound := quietPeak + int64(slow+1)*2*highWater + 32<<20
	r.fig("RSS peak alone / with slow ones", "%s / %s", mib(quietPeak), mib(loadedPeak))
	if e.gannet() {
		r.fig("slow receivers closed", "%.0f (gannet_slow_receivers_closed_total)", m["gannet_slow_receivers_closed_total"]-closedBefore)
		r.fig("dropped for slow receivers", "%.0f (gannet_messages_dropped_total{reason=\"slow_receiver\"})", m[`gannet_messages_dropped_total{reason="slow_receiver"}`])
	} else {
		r.fig("dropped", "%.0f ($SYS/broker/publish/messages/dropped)", m["$SYS/broker/publish/messages/dropped"])
	}

	cut := cutErr == nil
	detail := fmt.Sprintf("connection ended: %v", cut)
	if e.gannet() {
		counted := m["gannet_slow_receivers_closed_total"]-closedBefore >= 1
		cut = cut && counted
		detail += fmt.Sprintf(", counted: %v", counted)
	} else {
		detail += " (Mosquitto counts no such thing)"
	}
	r.check("stopped subscriber cut off, reason counted", cut, "%s", detail)
	r.check("memory bounded", loadedPeak <= bound, "peak %s with slow ones, bound %s (alone %s + 2 x %s per slow subscriber + 32 MiB)",
		mib(loadedPeak), mib(bound), mib(quietPeak), mib(highWater))
	r.check("normal subscribers lose nothing", loaded.Lost == 0 && quiet.Lost == 0, "%d lost alone, %d with slow ones", quiet.Lost, loaded.Lost)
	ratio := float64(loaded.P99) / float64(max(quiet.P99, 1))
	r.checkFull("normal p99 at most 2x without slow ones", ratio <= 2, "%s vs %s (%.2fx)", ms(loaded.P99), ms(quiet.P99), ratio)
	return nil
}
