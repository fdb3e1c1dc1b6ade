package torture

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// retainedStorm: many retained messages (dev/<i>/state), then many
// clients subscribe to dev/+/state at the same moment, at QoS 1, while
// one more subscribes to an unrelated topic. Each session's queue is
// configured to hold the whole retained set (max-queued-messages), so
// nothing may be dropped.
//
// Pass: every subscriber receives every retained message; memory within
// the configured limit; the unrelated SUBACK within 50 ms (full form
// only). The time until the last subscriber has everything is reported.
func retainedStorm(ctx context.Context, e *env) error {
	r := e.res
	retained := size(e, 2000, 20_000)
	subs := size(e, 20, 100)
	payload := 64
	l := Limits{MaxQueuedMessages: retained + 1000, MaxInflight: 1024,
		MemoryLimit: size(e, int64(256<<20), int64(1<<30)), MaxConnections: subs + 100}
	b, err := e.start(ctx, l)
	if err != nil {
		return err
	}
	r.fig("retained", "%d messages of %d B on dev/<i>/state", retained, payload)
	r.fig("storm", "%d clients subscribe to dev/+/state (QoS 1) at once, one to an unrelated topic", subs)

	e.logf("publishing %d retained messages", retained)
	pub := &publisher{addr: b.Addr, id: "retained-pub", qos: 1, retain: true, payload: payload,
		topic: func(seq uint64) []byte { return fmt.Appendf(nil, "dev/%05d/state", seq) }}
	defer pub.close()
	for range retained {
		if err := pub.send(ctx); err != nil {
			return err
		}
	}
	if err := pub.settle(ctx, time.Minute); err != nil {
		return err
	}
	if n := pub.acked.len(); n != int64(retained) {
		return fmt.Errorf("%d of %d retained messages acknowledged (%d refused)", n, retained, pub.refused.Load())
	}
	pub.close()

	got := make([]ledger, subs)
	cs, err := connectAll(ctx, b.Addr, subs, 64, func(i int) clientConfig {
		return clientConfig{id: fmt.Sprintf("retained-sub-%03d", i), cleanStart: true, inflight: 1}
	}, func(i int, c *client) error {
		c.onPublish = func(p *codec.Publish) {
			if seq, _, ok := readStamp(p.Payload); ok && p.Retain {
				got[i].add(seq)
			}
		}
		c.serve()
		return nil
	})
	if err != nil {
		return err
	}
	defer func() { closeAll(cs) }()
	other, _, err := connect(ctx, b.Addr, clientConfig{id: "retained-other", cleanStart: true, inflight: 1})
	if err != nil {
		return err
	}
	other.serve()
	defer other.close()

	base, err := b.Sample()
	if err != nil {
		return err
	}
	watch := watchRSS(b, 20*time.Millisecond)
	defer watch.stopOnce()
	e.logf("%d subscribe at once", subs)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, subs)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			codes, err := c.subscribe(ctx, codec.Subscription{Filter: []byte("dev/+/state"), QoS: 1})
			if err == nil && codes[0].IsError() {
				err = fmt.Errorf("SUBACK 0x%02x", byte(codes[0]))
			}
			errs[i] = err
		}()
	}
	var otherLatency time.Duration
	var otherErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-gate
		t0 := time.Now()
		_, otherErr = other.subscribe(ctx, codec.Subscription{Filter: []byte("other/unrelated"), QoS: 1})
		otherLatency = time.Since(t0)
	}()
	t0 := time.Now()
	close(gate)
	wg.Wait()
	for _, err := range append(errs, otherErr) {
		if err != nil {
			return err
		}
	}
	complete := func() int {
		n := 0
		for i := range got {
			if got[i].len() == int64(retained) {
				n++
			}
		}
		return n
	}
	_ = poll(ctx, size(e, 30*time.Second, 2*time.Minute), func() bool { return complete() == subs })
	took := time.Since(t0)
	peak := watch.end()
	var least int64 = int64(retained)
	for i := range got {
		least = min(least, got[i].len())
	}
	m, _ := b.Metrics(ctx)

	r.fig("all retained delivered", "%d of %d subscribers complete in %v; the least complete has %d", complete(), subs, took.Round(time.Millisecond), least)
	r.fig("unrelated SUBACK", "%s", ms(otherLatency))
	r.fig("RSS before / peak", "%s / %s", mib(base.RSS), mib(peak))
	if e.gannet() {
		var drops float64
		for k, v := range m {
			if len(k) > 29 && k[:29] == "gannet_messages_dropped_total" {
				drops += v
			}
		}
		r.fig("dropped", "%.0f (gannet_messages_dropped_total)", drops)
	} else {
		r.fig("dropped", "%.0f ($SYS/broker/publish/messages/dropped)", m["$SYS/broker/publish/messages/dropped"])
	}
	r.check("every subscriber has every retained message", complete() == subs,
		"%d of %d subscribers have all %d", complete(), subs, retained)
	r.check("memory within the memory limit", peak <= l.MemoryLimit, "peak RSS %s of %s", mib(peak), mib(l.MemoryLimit))
	r.checkFull("unrelated SUBACK within 50 ms", otherLatency <= 50*time.Millisecond, "%s", ms(otherLatency))
	return nil
}
