package torture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// offlineFlood: persistent sessions go offline while messages keep
// arriving for them, more than the node's queue budget holds; every cycle
// a tenth of the devices come back under new random client ids (as
// devices that lost their id do), so that their old sessions are left to
// expire while still matching their topics.
//
// Device d has topic flood/<d>; its first session subscribes to it and
// goes away, and a device that comes back subscribes to the same topic
// from a new session that stays online. The publisher pauses (and waits
// for every acknowledgement) while devices come back, so that the number
// of deliveries each acknowledged message owes is known exactly: one per
// session subscribed at the time.
//
// The ledger, before the old sessions expire: deliveries owed = delivered
// to the devices that came back + dropped (counted by the broker) + still
// queued. Gannet's queue gauge (gannet_queued_bytes) says how much is
// queued in bytes, and every queued message here costs the same bytes, a
// figure measured at the start with one message per session; Mosquitto's
// $SYS/broker/store/messages/count says how many messages it stores (one
// per queued message here, as no message has two receivers that still
// hold it), less those it stored before the flood (its $SYS retained
// messages). Then the broker is stopped (SIGTERM) and started again, and
// the old sessions are left to expire.
//
// Pass: the queue gauge never above the budget; RSS flat once the budget
// is full (full form only: the peak over the last cycle and after it
// within 1.1 times the second cycle's, the first with the budget full
// from its start, plus 8 MiB); drops counted exactly; the queues
// restored whole after the restart; every old session reaped when it
// expires, and nothing left queued. Restart time reported.
func offlineFlood(ctx context.Context, e *env) error {
	r := e.res
	n := size(e, 300, 5000)
	cycles := 3
	period := size(e, time.Second, 30*time.Second)
	rate := size(e, 1000, 2000)
	payload := 1024
	budget := size(e, int64(1<<20), int64(64<<20))
	expiry := size(e, 10*time.Second, 110*time.Second)
	if !e.gannet() {
		// Each read of Mosquitto's counters waits for two $SYS rounds
		// (seconds): the flood's ledger point comes later.
		expiry += size(e, 10*time.Second, 20*time.Second)
	}
	back := n / 10
	l := Limits{MaxQueuedMessages: 1000, MaxQueuedBytes: 1 << 20, QueuedBytesTotal: budget,
		MemoryLimit: size(e, int64(512<<20), int64(1<<30)), MaxSessions: 2*n + 100, MaxConnections: 2*n + 100}
	b, err := e.start(ctx, l)
	if err != nil {
		return err
	}
	r.fig("sessions", "%d persistent (MQTT 5, expiry %v), one QoS 1 subscription each, offline", n, expiry)
	r.fig("flood", "%d QoS 1 messages/s of %d B, %d cycles of %v; after each, %d devices come back under new ids", rate, payload, cycles, period, back)
	watch := watchRSS(b, 100*time.Millisecond)
	defer watch.stopOnce()
	base, err := b.Sample()
	if err != nil {
		return err
	}

	e.logf("%d sessions subscribe and go offline", n)
	_, err = connectAll(ctx, b.Addr, n, 256, func(i int) clientConfig {
		return clientConfig{id: fmt.Sprintf("flood-old-%05d", i), cleanStart: true, expiry: expiry, inflight: 1}
	}, func(i int, c *client) error {
		c.serve()
		codes, err := c.subscribe(ctx, codec.Subscription{Filter: fmt.Appendf(nil, "flood/%05d", i), QoS: 1})
		if err == nil && codes[0].IsError() {
			err = fmt.Errorf("SUBACK 0x%02x", byte(codes[0]))
		}
		if err == nil {
			c.hangUp()
		}
		return err
	})
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := waitOffline(ctx, b); err != nil {
		return err
	}
	// Mosquitto's store before the flood: its own $SYS retained messages.
	var storeBase float64
	if !e.gannet() {
		m, err := b.Metrics(ctx)
		if err != nil {
			return err
		}
		storeBase = m["$SYS/broker/store/messages/count"]
	}

	// Deliveries owed: one per session subscribed to the device's topic
	// when the broker acknowledged the message.
	returned := make([]atomic.Bool, n)
	var owed, owedNew atomic.Int64
	pub := &publisher{addr: b.Addr, id: "flood-pub", qos: 1, payload: payload,
		topic: func(seq uint64) []byte { return fmt.Appendf(nil, "flood/%05d", seq%uint64(n)) }}
	pub.onAck = func(seq uint64) {
		owed.Add(1)
		if returned[seq%uint64(n)].Load() {
			owed.Add(1)
			owedNew.Add(1)
		}
	}
	defer pub.close()
	var pubConn *client
	publishFor := func(d time.Duration) error {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); pub.run(ctx, rate, stop) }()
		err := sleepCtx(ctx, d)
		close(stop)
		<-done
		if err != nil {
			return err
		}
		if err := pub.settle(ctx, 30*time.Second); err != nil {
			return fmt.Errorf("publisher: acknowledgements outstanding: %w", err)
		}
		pub.mu.Lock()
		c := pub.c
		pub.mu.Unlock()
		if pubConn == nil {
			pubConn = c
		}
		if c != pubConn || c.closed() {
			// A message sent on a connection that ended may have been
			// routed without its PUBACK reaching us: the ledger would
			// not close.
			return fmt.Errorf("the publisher's connection ended during the flood: %v", c.err)
		}
		return nil
	}

	// One message per session first: the queue gauge then says what one
	// queued message costs.
	var unit int64
	for i := 0; i < n; i++ {
		if err := pub.send(ctx); err != nil {
			return err
		}
	}
	if err := pub.settle(ctx, 30*time.Second); err != nil {
		return err
	}
	if e.gannet() {
		g, err := b.waitMetric(ctx, "gannet_queued_bytes", 10*time.Second, func(v float64) bool { return v > 0 })
		if err != nil {
			return err
		}
		unit = int64(g) / int64(n)
		if int64(g)%int64(n) != 0 {
			return fmt.Errorf("one message for each of %d sessions made gannet_queued_bytes %v, not a multiple", n, g)
		}
		r.fig("bytes per queued message", "%d (gannet_queued_bytes with one per session)", unit)
	}

	// Sample the gauge while the flood runs.
	var gaugeMax atomic.Int64
	gaugeStop := make(chan struct{})
	gaugeDone := make(chan struct{})
	go func() {
		defer close(gaugeDone)
		if !e.gannet() {
			return
		}
		for {
			if v := b.metric(ctx, "gannet_queued_bytes"); int64(v) > gaugeMax.Load() {
				gaugeMax.Store(int64(v))
			}
			select {
			case <-gaugeStop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	stopGauge := func() {
		select {
		case <-gaugeStop:
		default:
			close(gaugeStop)
			<-gaugeDone
		}
	}
	defer stopGauge()

	var delivered ledger
	var newcomers []*client
	defer func() { closeAll(newcomers) }()
	// The budget fills during the first cycle; the next ones run with it
	// full, and memory should stay where it was.
	marks := []time.Time{time.Now()}
	for k := range cycles {
		e.logf("cycle %d: flood for %v", k+1, period)
		if err := publishFor(period); err != nil {
			return err
		}
		marks = append(marks, time.Now())
		// A tenth of the devices come back, under new ids.
		lo := k * back
		got, err := connectAll(ctx, b.Addr, back, 64, func(i int) clientConfig {
			return clientConfig{id: fmt.Sprintf("flood-new-%016x", rand.Uint64()), cleanStart: true, expiry: 10 * expiry, inflight: 1}
		}, func(i int, c *client) error {
			c.onPublish = func(p *codec.Publish) {
				if seq, _, ok := readStamp(p.Payload); ok {
					delivered.add(seq)
				}
			}
			c.serve()
			codes, err := c.subscribe(ctx, codec.Subscription{Filter: fmt.Appendf(nil, "flood/%05d", lo+i), QoS: 1})
			if err == nil && codes[0].IsError() {
				err = fmt.Errorf("SUBACK 0x%02x", byte(codes[0]))
			}
			if err == nil {
				returned[lo+i].Store(true)
			}
			return err
		})
		if err != nil {
			return err
		}
		newcomers = append(newcomers, got...)
	}
	if err := publishFor(period / 2); err != nil {
		return err
	}
	marks = append(marks, time.Now())
	stopGauge()
	// The devices that came back have everything owed to them: then they
	// go offline too, with nothing queued.
	if err := poll(ctx, 30*time.Second, func() bool { return delivered.len() >= owedNew.Load() }); err != nil {
		return fmt.Errorf("devices that came back got %d of %d messages: %w", delivered.len(), owedNew.Load(), err)
	}
	for _, c := range newcomers {
		c.hangUp()
	}
	pub.close()
	if err := waitOffline(ctx, b); err != nil {
		return err
	}
	sinceOffline := time.Since(t0)
	if sinceOffline > expiry-2*time.Second {
		return fmt.Errorf("the flood ran %v, too close to the sessions' expiry (%v) for the ledger", sinceOffline, expiry)
	}
	before, err := b.Metrics(ctx)
	if err != nil {
		return err
	}
	drops, queued, expectedDrops := ledgerAt(e.gannet(), before, unit, storeBase, owed.Load(), delivered.len())
	var perCycle []string
	for i := 1; i < len(marks); i++ {
		perCycle = append(perCycle, mib(watch.peakBetween(marks[i-1], marks[i])))
	}
	// Cycle 2 is the first with the budget full from its start; the last
	// cycle and the tail after it are compared with it.
	rssSecond := watch.peakBetween(marks[1], marks[2])
	rssLater := watch.peakBetween(marks[2], marks[len(marks)-1])
	acked := pub.acked.len()
	r.fig("messages acknowledged", "%d (%d refused), %d deliveries owed", acked, pub.refused.Load(), owed.Load())
	r.fig("delivered to devices back", "%d of %d owed", delivered.len(), owedNew.Load())
	r.fig("dropped (broker's count)", "%d", drops)
	r.fig("queued at the end", "%d messages", queued)
	r.fig("RSS", "%s before; peak per cycle %s (and the half cycle after)", mib(base.RSS), strings.Join(perCycle, ", "))

	// Stop and start again with the queues full.
	e.logf("stop (SIGTERM) and restart with %d messages queued", queued)
	stopTook := b.Stop()
	restartTook, err := b.Restart(ctx)
	if err != nil {
		return fmt.Errorf("cannot restart: %w", err)
	}
	r.fig("stop / restart", "%v / %v (to ready)", stopTook.Round(time.Millisecond), restartTook.Round(time.Millisecond))
	var restoredOK bool
	var restored string
	if e.gannet() {
		m, err := b.Metrics(ctx)
		if err != nil {
			return err
		}
		restoredOK = m["gannet_queued_bytes"] == before["gannet_queued_bytes"] && m["gannet_sessions"] == before["gannet_sessions"]
		restored = fmt.Sprintf("queued bytes %.0f before, %.0f after; sessions %.0f before, %.0f after",
			before["gannet_queued_bytes"], m["gannet_queued_bytes"], before["gannet_sessions"], m["gannet_sessions"])
	} else {
		m, err := b.Metrics(ctx)
		if err != nil {
			return err
		}
		restoredOK = m["$SYS/broker/store/messages/count"] >= before["$SYS/broker/store/messages/count"]
		restored = fmt.Sprintf("stored messages %.0f before, %.0f after", before["$SYS/broker/store/messages/count"], m["$SYS/broker/store/messages/count"])
	}

	// The old sessions expire; what they held goes with them.
	e.logf("waiting for %d sessions to expire", n)
	var reaped string
	var reapedOK bool
	left := time.Until(t0.Add(expiry)) + 30*time.Second
	if e.gannet() {
		_, err := b.waitMetric(ctx, "gannet_sessions_expired_total", left, func(v float64) bool { return v >= float64(n) })
		m, merr := b.Metrics(ctx)
		if merr != nil {
			return merr
		}
		reapedOK = err == nil && m["gannet_sessions_expired_total"] == float64(n) &&
			m["gannet_sessions"] == float64(back*cycles) && m["gannet_queued_bytes"] == 0
		reaped = fmt.Sprintf("%.0f expired of %d, %.0f sessions left (want %d), %.0f bytes queued",
			m["gannet_sessions_expired_total"], n, m["gannet_sessions"], back*cycles, m["gannet_queued_bytes"])
	} else {
		var m map[string]float64
		err := poll(ctx, left, func() bool {
			var merr error
			m, merr = b.Metrics(ctx)
			return merr == nil && m["$SYS/broker/clients/expired"] >= float64(n)
		})
		reapedOK = err == nil
		reaped = fmt.Sprintf("%.0f expired of %d, %.0f stored messages left", m["$SYS/broker/clients/expired"], n, m["$SYS/broker/store/messages/count"]-storeBase)
	}
	after, _ := b.Sample()
	r.fig("RSS after the sessions expired", "%s", mib(after.RSS))

	if e.gannet() {
		r.check("queue gauge within the budget", gaugeMax.Load() <= budget, "peak %s of %s (gannet_queued_bytes)", mib(gaugeMax.Load()), mib(budget))
	}
	peak := watch.end()
	r.check("memory within the memory limit", peak <= l.MemoryLimit, "peak RSS %s of %s", mib(peak), mib(l.MemoryLimit))
	r.checkFull("RSS flat once the budget is full", float64(rssLater) <= 1.1*float64(rssSecond)+8<<20,
		"peak %s after cycle 2, %s during it (%.2fx; at most 1.1x + 8 MiB)", mib(rssLater), mib(rssSecond), float64(rssLater)/float64(max(rssSecond, 1)))
	r.check("drops counted exactly", drops == expectedDrops,
		"%d counted; %d owed - %d delivered - %d queued = %d", drops, owed.Load(), delivered.len(), queued, expectedDrops)
	r.check("queues restored after restart", restoredOK, "%s", restored)
	r.check("expired sessions reaped", reapedOK, "%s", reaped)
	return nil
}

// ledgerAt reads what the broker says it dropped and holds queued, and
// what it should have dropped given the deliveries owed and made.
func ledgerAt(gannet bool, m map[string]float64, unit int64, storeBase float64, owed, delivered int64) (drops, queued, expected int64) {
	if gannet {
		for _, reason := range []string{"queue_full", "queue_budget", "expired", "slow_receiver", "too_large"} {
			drops += int64(m[`gannet_messages_dropped_total{reason="`+reason+`"}`])
		}
		if unit > 0 {
			queued = int64(m["gannet_queued_bytes"]) / unit
		}
	} else {
		drops = int64(m["$SYS/broker/publish/messages/dropped"])
		queued = int64(m["$SYS/broker/store/messages/count"] - storeBase)
	}
	return drops, queued, owed - delivered - queued
}

// waitOffline waits until the broker counts no client connected (besides
// Mosquitto's $SYS watcher).
func waitOffline(ctx context.Context, b *Broker) error {
	name, most := "gannet_clients_connected", 0.0
	if b.Kind == Mosquitto {
		name, most = "$SYS/broker/clients/connected", 1
	}
	var v float64
	err := poll(ctx, 20*time.Second, func() bool {
		m, err := b.Metrics(ctx)
		v = m[name]
		return err == nil && v <= most
	})
	if err != nil {
		return fmt.Errorf("%s is still %v: %w", name, v, err)
	}
	return nil
}
