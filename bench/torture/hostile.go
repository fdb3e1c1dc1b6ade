package torture

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gannetmq/gannet/bench"
	"github.com/gannetmq/gannet/codec"
)

// hostileClients: well-behaved clients (bench's p2p scenario: 50
// publisher/subscriber pairs at QoS 1, below the rate limit) measured
// alone, then again while, at the same time:
//
//   - one client sends SUBSCRIBEs of 100,000 copies of "#", one after
//     another, and reads whatever that brings it;
//   - one sends PUBLISHes of the maximum packet size as fast as TCP
//     takes them;
//   - many connections send nothing, and as many send half a CONNECT and
//     stall; each is dialled again when the broker closes it;
//   - one publishes small messages as fast as TCP allows, with a
//     per-client publish rate limit configured.
//
// Each hostile client reconnects when the broker disconnects it. They run
// in a process of their own (abusers.go). Gannet runs with the limits an
// operator facing such clients would set: a publish rate in messages and
// bytes, and flapping detection (a client id connecting more than 15
// times a minute is banned for five, EMQX's figures), which the clients
// cut off and connecting again soon meet.
//
// Pass: memory within the configured limit; the well-behaved clients lose
// nothing; their p99 latency at most twice the quiet figure, measured
// alone before the hostile clients arrive (full form only). They are
// measured alone again once the hostile clients are gone, for what those
// leave behind.
func hostileClients(ctx context.Context, e *env) error {
	r := e.res
	idle := size(e, 200, 5000)
	pairs := 50
	rate := 1000 // 20 per publisher each second, below the rate limit
	window := size(e, 3*time.Second, 20*time.Second)
	copies := 100_000
	maxPacket := 1 << 20
	l := Limits{MaxPacketSize: maxPacket, MaxPublishRate: 100, MaxPublishBytesRate: 1 << 20, MemoryLimit: size(e, int64(512<<20), int64(1<<30)),
		MaxConnections: 2*idle + 2*pairs + 200, FlappingMaxCount: 15}
	b, err := e.start(ctx, l)
	if err != nil {
		return err
	}
	r.fig("well-behaved", "%d pairs, QoS 1, %d messages/s in all, %v measured per run", pairs, rate, window)
	abusers := e.opts.Abusers
	if abusers == nil {
		abusers = Abusers
	}
	r.fig("hostile", "SUBSCRIBE of %d x #; %d B PUBLISHes; %d silent and %d half-CONNECT connections; a flooder (running: %s)",
		copies, maxPacket, idle, idle, strings.Join(abusers, ", "))
	watch := watchRSS(b, 50*time.Millisecond)
	defer watch.stopOnce()
	// The broker's own latency histograms (Gannet), read around each
	// run: what the broker took, apart from how the host scheduled the
	// clients.
	var own []string
	p2p := func() (*bench.Result, time.Time, time.Time, error) {
		var m0 map[string]float64
		if e.gannet() {
			m0, _ = b.Metrics(ctx)
		}
		t0 := time.Now()
		res, err := bench.Run(ctx, bench.Config{Scenario: "p2p", Addr: b.Addr, Clients: pairs, QoS: 1, Payload: 64,
			Rate: rate, Duration: window, Warmup: time.Second, Drain: 10 * time.Second, BrokerPID: b.PID()})
		t1 := time.Now()
		if e.gannet() {
			m1, _ := b.Metrics(ctx)
			own = append(own, brokerLatency(m0, m1))
		}
		return res, t0, t1, err
	}
	e.logf("well-behaved clients alone")
	quiet, q0, q1, err := p2p()
	if err != nil {
		return fmt.Errorf("quiet run: %w", err)
	}
	quietPeak := watch.peakBetween(q0, q1)

	cfg := abuserConfig{Addr: b.Addr, Abusers: abusers, Idle: idle, Copies: copies, MaxPacket: maxPacket}
	e.logf("hostile clients arrive")
	h, err := startAbusers(ctx, cfg, e.opts.AbuserNice)
	if err != nil {
		return err
	}
	defer h.kill()
	e.logf("well-behaved clients among them")
	loaded, l0, l1, err := p2p()
	if err != nil {
		return fmt.Errorf("run among hostile clients: %w", err)
	}
	loadedPeak := watch.peakBetween(l0, l1)
	hr, err := h.end()
	if err != nil {
		return err
	}
	// Alone again once the hostile clients are gone: what they leave
	// behind, and how far the host drifted meanwhile. The condition
	// stays against the quiet run before them, which nothing of theirs
	// can have touched.
	e.logf("well-behaved clients alone again")
	after, _, _, err := p2p()
	if err != nil {
		return fmt.Errorf("quiet run after: %w", err)
	}
	peak := watch.end()
	m, _ := b.Metrics(ctx)

	r.fig("well-behaved alone", "p50 %s, p99 %s, %.0f received/s, %d lost", ms(quiet.P50), ms(quiet.P99), quiet.RecvRate, quiet.Lost)
	r.fig("well-behaved among hostile", "p50 %s, p99 %s, %.0f received/s, %d lost", ms(loaded.P50), ms(loaded.P99), loaded.RecvRate, loaded.Lost)
	r.fig("well-behaved alone again", "p50 %s, p99 %s, %.0f received/s, %d lost", ms(after.P50), ms(after.P99), after.RecvRate, after.Lost)
	if len(own) == 3 {
		r.fig("broker's own, alone", "%s", own[0])
		r.fig("broker's own, among hostile", "%s", own[1])
		r.fig("broker's own, alone again", "%s", own[2])
	}
	r.fig("CPU alone / among hostile", "broker %s / %s; well-behaved clients %s / %s; hostile clients %.0f%% (nice %d)",
		cpuShare(quiet), cpuShare(loaded), toolShare(quiet), toolShare(loaded),
		100*hr.CPU.Seconds()/max(hr.Took.Seconds(), 1e-9), e.opts.AbuserNice)
	r.fig("RSS peak alone / among hostile", "%s / %s", mib(quietPeak), mib(loadedPeak))
	r.fig("100,000 x # SUBSCRIBE", "%d SUBACKs (first: %s), %d disconnects", hr.Subacks, hr.Codes, hr.BombDrops)
	r.fig("maximum-size PUBLISH", "%d sent, %d disconnects", hr.BigSent, hr.BigDrops)
	r.fig("flooder", "%d sent, %d disconnects", hr.FloodSent, hr.FloodDrops)
	r.fig("silent / half CONNECT", "%d / %d closed by the broker and dialled again", hr.SilentClosed, hr.HalfClosed)
	if e.gannet() {
		refused := []string{}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if strings.HasPrefix(k, "gannet_connections_refused_total") && m[k] > 0 {
				refused = append(refused, fmt.Sprintf("%s %.0f", strings.TrimPrefix(k, "gannet_connections_refused_total"), m[k]))
			}
		}
		r.fig("broker's counts", "rate-limited disconnects %.0f, protocol errors %.0f, slow receivers closed %.0f, dropped for slow receivers %.0f, refused %s",
			m["gannet_rate_limited_disconnects_total"], m["gannet_protocol_errors_total"], m["gannet_slow_receivers_closed_total"],
			m[`gannet_messages_dropped_total{reason="slow_receiver"}`], cmp.Or(strings.Join(refused, ", "), "none"))
	}
	r.check("memory within the memory limit", peak <= l.MemoryLimit, "peak RSS %s of %s", mib(peak), mib(l.MemoryLimit))
	r.check("well-behaved clients lose nothing", quiet.Lost == 0 && loaded.Lost == 0 && loaded.Errors == 0 && after.Lost == 0,
		"%d lost alone; %d lost, %d errors among hostile; %d lost alone again", quiet.Lost, loaded.Lost, loaded.Errors, after.Lost)
	ratio := float64(loaded.P99) / float64(max(quiet.P99, 1))
	r.checkFull("well-behaved p99 at most 2x quiet", ratio <= 2, "%s vs %s (%.2fx; alone again after them %s)",
		ms(loaded.P99), ms(quiet.P99), ratio, ms(after.P99))
	return nil
}

// hostiles are the abusive clients, each on goroutines of its own until
// end.
type hostiles struct {
	addr    string
	abusers []string // the kinds that run (of Abusers)
	stop    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	mu    sync.Mutex
	conns map[net.Conn]struct{} // silent and half-CONNECT connections open
	codes map[codec.ReasonCode]int
	// answered is closed when the broker first answers the huge
	// SUBSCRIBE, with a SUBACK or by disconnecting.
	answered     chan struct{}
	answeredOnce sync.Once

	subacks, bombDrops       atomic.Int64
	bigSent, bigDrops        atomic.Int64
	floodSent, floodDrops    atomic.Int64
	silentClosed, halfClosed atomic.Int64
	silentOpen, halfOpen     atomic.Int64
}

// start launches every hostile client and returns once the silent and
// half-CONNECT connections are all open and the first huge SUBSCRIBE is
// answered.
func (h *hostiles) start(ctx context.Context, idle, copies, maxPacket int) error {
	h.answered = make(chan struct{})
	if h.runs("subscribe") {
		h.loop(func() error { return h.bomb(ctx, copies) }, &h.bombDrops)
	} else {
		close(h.answered)
	}
	if h.runs("big") {
		h.loop(func() error { return h.big(ctx, maxPacket) }, &h.bigDrops)
	}
	if h.runs("flood") {
		h.loop(func() error { return h.flood(ctx) }, &h.floodDrops)
	}
	if !h.runs("idle") {
		idle = 0
	}
	half := (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, CleanStart: true,
		KeepAlive: 60, ClientID: []byte("half-connect-client")}).Append(nil, codec.V5)
	half = half[:len(half)/2]
	slots := make(chan struct{}, 200)
	for i := range 2 * idle {
		slots <- struct{}{}
		first := true
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			open, closed := &h.silentOpen, &h.silentClosed
			var hello []byte
			if i%2 == 1 {
				open, closed, hello = &h.halfOpen, &h.halfClosed, half
			}
			for h.running() {
				nc, err := net.DialTimeout("tcp", h.addr, 10*time.Second)
				if err == nil && hello != nil {
					_, err = nc.Write(hello)
				}
				if first {
					first = false
					<-slots
				}
				if err != nil {
					if nc != nil {
						nc.Close()
					}
					h.pause(100 * time.Millisecond)
					continue
				}
				if !h.track(nc) {
					return
				}
				open.Add(1)
				var buf [512]byte
				for {
					if _, err := nc.Read(buf[:]); err != nil {
						break
					}
				}
				open.Add(-1)
				h.untrack(nc)
				if h.running() {
					closed.Add(1)
				}
			}
		}()
	}
	for range cap(slots) {
		slots <- struct{}{}
	}
	if err := poll(ctx, time.Minute, func() bool { return h.silentOpen.Load()+h.halfOpen.Load() >= int64(2*idle) }); err != nil {
		return fmt.Errorf("%d silent and %d half-CONNECT connections open of %d each: %w", h.silentOpen.Load(), h.halfOpen.Load(), idle, err)
	}
	select {
	case <-h.answered:
	case <-time.After(time.Minute):
		return fmt.Errorf("no answer to a SUBSCRIBE of %d filters within a minute", copies)
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// runs says whether the hostile client of this kind (Abusers) runs.
func (h *hostiles) runs(kind string) bool { return slices.Contains(h.abusers, kind) }

func (h *hostiles) running() bool {
	select {
	case <-h.stop:
		return false
	default:
		return true
	}
}

// pause waits d or until the end.
func (h *hostiles) pause(d time.Duration) {
	select {
	case <-h.stop:
	case <-time.After(d):
	}
}

func (h *hostiles) track(nc net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running() {
		nc.Close()
		return false
	}
	h.conns[nc] = struct{}{}
	return true
}

func (h *hostiles) untrack(nc net.Conn) {
	h.mu.Lock()
	delete(h.conns, nc)
	h.mu.Unlock()
	nc.Close()
}

// loop runs one hostile client again each time it ends, counting the
// ends in drops, until end.
func (h *hostiles) loop(run func() error, drops *atomic.Int64) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for h.running() {
			_ = run()
			if h.running() {
				drops.Add(1)
				h.pause(10 * time.Millisecond)
			}
		}
	}()
}

// connect makes a hostile client's connection, closed at end.
func (h *hostiles) connect(ctx context.Context, id string) (*client, error) {
	c, _, err := connect(ctx, h.addr, clientConfig{id: id, cleanStart: true, timeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	if !h.track(c.nc) {
		return nil, errClosed
	}
	return c, nil
}

// bomb subscribes to copies x "#" over and over.
func (h *hostiles) bomb(ctx context.Context, copies int) error {
	c, err := h.connect(ctx, "hostile-bomb")
	if err != nil {
		return err
	}
	c.onPublish = func(*codec.Publish) {}
	c.serve()
	defer h.untrack(c.nc)
	defer c.close()
	subs := make([]codec.Subscription, copies)
	for i := range subs {
		subs[i] = codec.Subscription{Filter: []byte("#")}
	}
	for h.running() {
		codes, err := c.subscribe(ctx, subs...)
		h.answeredOnce.Do(func() { close(h.answered) })
		if err != nil {
			return err
		}
		if h.subacks.Add(1) == 1 {
			h.mu.Lock()
			h.codes = map[codec.ReasonCode]int{}
			for _, code := range codes {
				h.codes[code]++
			}
			h.mu.Unlock()
		}
	}
	return nil
}

// subackCodes describes the codes of the first SUBACK the bomb got.
func (h *hostiles) subackCodes() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(h.codes)) {
		parts = append(parts, fmt.Sprintf("%d x 0x%02x", h.codes[code], byte(code)))
	}
	return strings.Join(parts, ", ")
}

// big publishes packets of exactly maxPacket bytes at QoS 0, as fast as
// the connection takes them.
func (h *hostiles) big(ctx context.Context, maxPacket int) error {
	c, err := h.connect(ctx, "hostile-big")
	if err != nil {
		return err
	}
	defer h.untrack(c.nc)
	p := codec.Publish{Topic: []byte("hostile/big")}
	p.Payload = make([]byte, maxPacket-p.Size(codec.V5)-8)
	for len(p.Append(nil, codec.V5)) < maxPacket {
		p.Payload = append(p.Payload, 0)
	}
	frame := p.Append(nil, codec.V5)
	for h.running() {
		if err := c.write(frame); err != nil {
			return err
		}
		h.bigSent.Add(1)
	}
	return nil
}

// flood publishes small QoS 0 messages in writes of a thousand, as fast
// as TCP takes them.
func (h *hostiles) flood(ctx context.Context) error {
	c, err := h.connect(ctx, "hostile-flood")
	if err != nil {
		return err
	}
	defer h.untrack(c.nc)
	var batch []byte
	p := codec.Publish{Topic: []byte("hostile/flood"), Payload: make([]byte, 64)}
	for range 1000 {
		batch = p.Append(batch, codec.V5)
	}
	for h.running() {
		if err := c.write(batch); err != nil {
			return err
		}
		h.floodSent.Add(1000)
	}
	return nil
}

// end stops every hostile client and waits for them.
func (h *hostiles) end() {
	h.once.Do(func() {
		h.mu.Lock()
		close(h.stop)
		for nc := range h.conns {
			nc.Close()
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
}
