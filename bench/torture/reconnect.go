package torture

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// reconnectStorm: persistent clients subscribed at QoS 1 with background
// traffic; the broker is killed with SIGKILL and restarted; every client
// reconnects at the same moment, with no jitter, and resumes its session.
//
// Each message k goes to topic storm/<k mod n>, which client k mod n alone
// subscribes to, so one ledger of what arrived, against the publisher's
// ledger of what the broker acknowledged, finds any loss. The publisher
// keeps publishing through the kill (reconnecting until the broker is
// back), and the ledgers are compared once everything owed has had time
// to arrive.
//
// Pass: every client back with its session; no acknowledged message lost;
// the restarted broker's peak RSS (VmHWM, which covers loading its state
// and the storm) within 1.5 times its steady RSS before the kill (full
// form only). CONNACK latency percentiles are reported.
func reconnectStorm(ctx context.Context, e *env) error {
	r := e.res
	n := size(e, 200, 10_000)
	rate := size(e, 400, 1000)
	before := size(e, 1500*time.Millisecond, 10*time.Second)
	after := size(e, time.Second, 5*time.Second)
	expiry := time.Hour
	l := Limits{MaxConnections: n + 100, MaxQueuedMessages: 10_000, MaxInflight: 1024}
	b, err := e.start(ctx, l)
	if err != nil {
		return err
	}
	r.fig("clients", "%d persistent (MQTT 5, session expiry %v), one QoS 1 subscription each", n, expiry)
	r.fig("background traffic", "%d QoS 1 messages/s, %v before the kill and %v after all are back", rate, before, after)

	var received ledger
	var misrouted atomic.Int64
	handler := func(i int) func(*codec.Publish) {
		return func(p *codec.Publish) {
			seq, _, ok := readStamp(p.Payload)
			if !ok {
				return
			}
			if seq%uint64(n) != uint64(i) {
				misrouted.Add(1)
			}
			received.add(seq)
		}
	}
	cfg := func(i int) clientConfig {
		return clientConfig{id: fmt.Sprintf("storm-%05d", i), expiry: expiry, inflight: 1}
	}
	e.logf("connecting %d subscribers", n)
	subs, err := connectAll(ctx, b.Addr, n, 256, cfg, func(i int, c *client) error {
		c.onPublish = handler(i)
		c.serve()
		codes, err := c.subscribe(ctx, codec.Subscription{Filter: []byte(fmt.Sprintf("storm/%05d", i)), QoS: 1})
		if err == nil && codes[0].IsError() {
			err = fmt.Errorf("SUBACK 0x%02x", byte(codes[0]))
		}
		return err
	})
	if err != nil {
		return err
	}
	defer func() { closeAll(subs) }()

	pub := &publisher{addr: b.Addr, id: "storm-pub", qos: 1, payload: 64,
		topic: func(seq uint64) []byte { return fmt.Appendf(nil, "storm/%05d", seq%uint64(n)) }}
	defer pub.close()
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); pub.run(ctx, rate, stop) }()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-pubDone
	}()

	e.logf("traffic for %v", before)
	if err := sleepCtx(ctx, before); err != nil {
		return err
	}
	steady, err := b.Sample()
	if err != nil {
		return err
	}
	ackedBefore := pub.acked.len()
	e.logf("kill -9 (steady RSS %s, %d acknowledged)", mib(steady.RSS), ackedBefore)
	b.Kill()
	// Every connection ends with the process; the readers see it.
	closeAll(subs)
	restart, err := b.Restart(ctx)
	if err != nil {
		return fmt.Errorf("cannot restart after kill -9: %w", err)
	}
	watch := watchRSS(b, 20*time.Millisecond)

	e.logf("restarted in %v; %d clients reconnect at once", restart.Round(time.Millisecond), n)
	lat := newLatency()
	var back, present, retried, refused atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			c := cfg(i)
			c.timeout = 60 * time.Second
			for attempt := 0; attempt < 5; attempt++ {
				if attempt > 0 {
					retried.Add(1)
					if sleepCtx(ctx, time.Second) != nil {
						return
					}
				}
				t0 := time.Now()
				cl, ca, err := connect(ctx, b.Addr, c)
				if err != nil {
					if _, ok := err.(errRefused); ok {
						refused.Add(1)
					}
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				lat.record(time.Since(t0))
				cl.onPublish = handler(i)
				cl.serve()
				subs[i] = cl
				back.Add(1)
				if ca.SessionPresent {
					present.Add(1)
				}
				return
			}
		}()
	}
	stormStart := time.Now()
	close(gate)
	wg.Wait()
	storm := time.Since(stormStart)
	e.logf("%d of %d back in %v", back.Load(), n, storm.Round(time.Millisecond))

	if err := sleepCtx(ctx, after); err != nil {
		return err
	}
	close(stop)
	<-pubDone
	_ = pub.settle(ctx, 10*time.Second)
	acked := pub.acked.len()
	// Wait for what is owed: the acknowledged messages the subscribers
	// do not have yet.
	drain := size(e, 15*time.Second, 60*time.Second)
	_ = poll(ctx, drain, func() bool { return pub.acked.missing(&received) == 0 })
	lost := pub.acked.missing(&received)
	peak := watch.end()
	if s, err := b.Sample(); err == nil {
		peak = max(peak, s.Peak)
	}

	r.fig("restart after kill -9", "%v (to ready)", restart.Round(time.Millisecond))
	r.fig("storm", "%d of %d back in %v; %d retried, %d refused", back.Load(), n, storm.Round(time.Millisecond), retried.Load(), refused.Load())
	r.fig("CONNACK latency", "p50 %s, p99 %s, max %s", ms(lat.at(50)), ms(lat.at(99)), ms(lat.max()))
	r.fig("messages acknowledged", "%d (%d before the kill)", acked, ackedBefore)
	r.fig("received", "%d unique, %d duplicates, %d misrouted", received.len(), received.duplicates(), misrouted.Load())
	r.fig("RSS steady / peak after restart", "%s / %s (%.2fx)", mib(steady.RSS), mib(peak), float64(peak)/float64(steady.RSS))
	if firstErr != nil {
		r.fig("first reconnect error", "%v", firstErr)
	}

	r.check("all clients back", back.Load() == int64(n), "%d of %d", back.Load(), n)
	r.check("sessions kept across kill -9", present.Load() == back.Load(), "%d of %d CONNACKs with session present", present.Load(), back.Load())
	r.check("no acknowledged QoS 1 message lost", lost == 0 && misrouted.Load() == 0,
		"%d of %d acknowledged messages never arrived, %d misrouted", lost, acked, misrouted.Load())
	r.checkFull("peak RSS within 1.5x steady", float64(peak) <= 1.5*float64(steady.RSS),
		"%s peak, %s steady (%.2fx)", mib(peak), mib(steady.RSS), float64(peak)/float64(steady.RSS))
	return nil
}

// sleepCtx waits d: a scenario's phase lasting as long as it should, not
// a wait for something to happen.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
