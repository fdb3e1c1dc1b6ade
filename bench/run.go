// Package bench is an MQTT load generator: it drives a broker with one of
// a few standard scenarios over raw sockets and reports throughput,
// latency percentiles from an HDR histogram, losses and duplicates counted
// by sequence numbers in the payloads, and the broker's CPU time and
// memory read from /proc.
//
// Connections are served by gnet event loops (one per core), not by a
// goroutine each; only publishing clients have a goroutine, which writes
// with AsyncWrite under a credit window so that the generator never runs
// further ahead of the broker than the window allows. Over TLS and
// WebSocket (Config.Transport), each connection has a goroutine that
// reads it instead of an event loop (transport.go).
package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/panjf2000/gnet/v2"

	"github.com/gannetmq/gannet/codec"
)

// Config is one run.
type Config struct {
	Scenario    string
	Addr        string // broker
	SubAddr     string // where subscribers connect (default Addr); comma-separated: spread over them
	Clients     int    // conn, p2p (pairs), stresser
	Publishers  int    // fanin, fanout, shared, retained
	Subscribers int    // fanout, shared, retained
	Payload     int    // bytes, at least 20
	// JSON fills the payload after its header with a JSON telemetry
	// reading whose values change with every message, rather than zeros.
	JSON    bool
	QoS     byte
	Version codec.Version
	// SessionExpiry > 0 gives every client a session the broker keeps (and,
	// with persistence, stores): MQTT 5 asks for this expiry, 3.x connects
	// with clean session 0.
	SessionExpiry time.Duration
	Rate          int // total messages per second; 0: unlimited
	// Tick paces a fixed Rate: the messages due are sent together every
	// tick from one goroutine; 0 gives every message its own timer.
	Tick        time.Duration
	Duration    time.Duration
	Count       int64 // messages per publisher; 0: until Duration ends
	Warmup      time.Duration
	Window      int   // unacknowledged messages per publisher
	PingEvery   int64 // QoS 0: a PINGREQ every this many messages
	ConnectRate int   // conn: connections per second; 0: as fast as possible
	// ConnectWindow (conn) keeps at most this many CONNECTs waiting for
	// their CONNACK; 0: no bound.
	ConnectWindow int
	// Username and Password are sent by every client when set; "%d" in
	// Username becomes the client's index, modulo Users when Users > 0
	// (see conn.go).
	// IDPrefix replaces "bench-" in the publishers' and subscribers'
	// client ids, so that several generators can share a broker.
	IDPrefix string
	Username string
	Password string
	Users    int
	// ClientID is the conn scenario's client id, "%d" the client's index
	// (default bench-conn-%d).
	ClientID string
	// KeepAlive is the keepalive every CONNECT asks for; 0: 300 s;
	// negative: none.
	KeepAlive time.Duration
	// ConnSubscribe (conn) has every client subscribe to this filter at
	// QoS once connected, "%d" its index; empty: no subscription.
	ConnSubscribe string
	// Disconnect (conn) has every client send DISCONNECT and close once
	// all are connected and the broker's memory is measured; the memory
	// is measured again after, for what the broker keeps of the
	// sessions (persistent ones with SessionExpiry).
	Disconnect bool
	// Topic is the topic of pair i in p2p and cluster, and of client i in
	// stresser, "%d" the index and "%u" the username (default
	// bench/p2p/%d, bench/stress/%d).
	Topic string
	// Transport is how clients reach the broker: plain TCP (the zero
	// value), TLS, WebSocket, or WebSocket over TLS (transport.go).
	Transport Transport

	BrokerPID int
	Drain     time.Duration // how long to wait for stragglers
	Retain    bool
	// RetainedTopics is how many distinct topics a retained storm cycles
	// through per publisher.
	RetainedTopics int
	Progress       io.Writer // live progress line; nil: none
}

// Result is what a run measured.
type Result struct {
	Scenario    string        `json:"scenario"`
	Clients     int           `json:"clients"`
	Publishers  int           `json:"publishers"`
	Subscribers int           `json:"subscribers"`
	QoS         byte          `json:"qos"`
	Payload     int           `json:"payload"`
	Window      time.Duration `json:"window_ns"`
	Sent        int64         `json:"sent"`
	Received    int64         `json:"received"`
	Expected    int64         `json:"expected"`
	Lost        int64         `json:"lost"`
	Duplicates  int64         `json:"duplicates"`
	Errors      int64         `json:"errors"`
	SentRate    float64       `json:"sent_per_sec"`
	RecvRate    float64       `json:"received_per_sec"`
	P50         time.Duration `json:"p50_ns"`
	P90         time.Duration `json:"p90_ns"`
	P99         time.Duration `json:"p99_ns"`
	P999        time.Duration `json:"p999_ns"`
	BrokerCPU   time.Duration `json:"broker_cpu_ns"`
	BrokerUsPer float64       `json:"broker_cpu_us_per_msg"`
	BrokerRSS   int64         `json:"broker_rss_bytes"`
	BrokerPeak  int64         `json:"broker_peak_rss_bytes"`
	RSSPerConn  float64       `json:"broker_rss_per_conn_bytes,omitempty"`
	// RSSPerOffline (conn with Disconnect) is the broker's RSS once every
	// client disconnected, less its RSS before the first connected, per
	// client: what an offline session costs.
	RSSPerOffline float64 `json:"broker_rss_per_offline_session_bytes,omitempty"`
	ConnectRate   float64 `json:"connects_per_sec,omitempty"`
	// Conn: CONNACKs that accepted the client (P50 to Max are their
	// CONNECT-to-CONNACK latencies), CONNECTs refused by code, and clients
	// closed or never answered before a CONNACK.
	Connected   int64            `json:"connected,omitempty"`
	Refused     int64            `json:"refused,omitempty"`
	RefusedBy   map[string]int64 `json:"refused_by,omitempty"`
	Unanswered  int64            `json:"unanswered,omitempty"`
	Max         time.Duration    `json:"max_ns,omitempty"`
	ToolCPU     time.Duration    `json:"tool_cpu_ns"`
	ToolUsPer   float64          `json:"tool_cpu_us_per_msg"`
	FirstErrors []string         `json:"first_errors,omitempty"`
	// RSSCurve is the broker's RSS as connections were added (conn).
	RSSCurve    []RSSPoint `json:"rss_curve,omitempty"`
	LossAllowed bool       `json:"loss_allowed"`
	// Transport names the transport and, over TLS, what the first
	// connection negotiated ("tls: TLS 1.3, TLS_AES_128_GCM_SHA256,
	// X25519, full handshakes"); TLSResumed counts the connections that
	// resumed a session instead of making a full handshake.
	Transport  string `json:"transport,omitempty"`
	TLSResumed int64  `json:"tls_resumed,omitempty"`
}

// RSSPoint is the broker's resident memory with Conns clients connected.
type RSSPoint struct {
	Conns int   `json:"conns"`
	RSS   int64 `json:"rss_bytes"`
}

// Failed reports whether the run lost or duplicated more than its QoS
// allows (any loss at QoS 1 and 2, any duplicate at QoS 2), or whether a
// client was refused or never answered at CONNECT.
func (r *Result) Failed() bool {
	return r.Refused > 0 || r.Unanswered > 0 ||
		(!r.LossAllowed && (r.Lost > 0 || (r.QoS == 2 && r.Duplicates > 0)))
}

type runner struct {
	cfg     Config
	cli     *gnet.Client // plain TCP clients' event loops; nil for stream transports
	streams *dialer      // TLS and WebSocket clients (transport.go)
	clients []*client

	stopping   atomic.Bool
	measuring  atomic.Bool
	sent       atomic.Int64
	received   atomic.Int64
	dups       atomic.Int64
	windowSent atomic.Int64
	windowRecv atomic.Int64
	pubSeq     []atomic.Uint64

	histMu sync.Mutex
	hist   *hdrhistogram.Histogram

	errMu    sync.Mutex
	errors   []string
	refusals map[string]int64 // CONNACK code and name: clients refused
}

func (r *runner) record(ns int64) {
	r.histMu.Lock()
	_ = r.hist.RecordValue(max(ns/1000, 1)) // microseconds
	r.histMu.Unlock()
}

func (r *runner) errorf(format string, args ...any) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	if len(r.errors) < 10 {
		r.errors = append(r.errors, fmt.Sprintf(format, args...))
	}
}

// Run executes one scenario and returns what it measured.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, hist: hdrhistogram.New(1, 60_000_000, 3)}
	var err error
	if cfg.Transport.stream() {
		if r.streams, err = newDialer(cfg.Transport, append([]string{cfg.Addr}, strings.Split(cfg.SubAddr, ",")...)); err != nil {
			return nil, err
		}
		defer func() { r.stopping.Store(true); r.streams.stop() }()
	} else {
		if r.cli, err = gnet.NewClient(&handler{}, gnet.WithMulticore(true), gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithReadBufferCap(256<<10), gnet.WithWriteBufferCap(256<<10), gnet.WithLogger(quietLogger{})); err != nil {
			return nil, err
		}
		if err := r.cli.Start(); err != nil {
			return nil, err
		}
		defer func() { r.stopping.Store(true); _ = r.cli.Stop() }()
	}
	var res *Result
	if cfg.Scenario == "conn" {
		res, err = r.conn(ctx)
	} else {
		res, err = r.traffic(ctx)
	}
	if res != nil {
		res.Transport = cfg.Transport.Name()
		if r.streams != nil {
			res.Transport = cmp.Or(r.streams.description(), res.Transport)
			res.TLSResumed = r.streams.resumed.Load()
		}
	}
	return res, err
}

func (cfg *Config) fill() error {
	if cfg.Version == 0 {
		cfg.Version = codec.V311
	}
	if cfg.SubAddr == "" {
		cfg.SubAddr = cfg.Addr
	}
	if cfg.Payload < headerSize {
		cfg.Payload = headerSize
	}
	if cfg.PingEvery <= 0 {
		cfg.PingEvery = 100
	}
	if cfg.Window <= 0 {
		cfg.Window = 100
		if cfg.QoS == 0 {
			cfg.Window = 10 * int(cfg.PingEvery)
		}
	}
	if cfg.QoS == 0 && cfg.Window < 2*int(cfg.PingEvery) {
		return errors.New("--inflight must be at least twice the ping interval at QoS 0")
	}
	if cfg.Tick < 0 {
		return errors.New("--tick must not be negative")
	}
	if cfg.Duration <= 0 && cfg.Count <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 10 * time.Second
	}
	if cfg.RetainedTopics <= 0 {
		cfg.RetainedTopics = 1000
	}
	if cfg.QoS > 2 {
		return fmt.Errorf("--qos must be 0, 1 or 2, got %d", cfg.QoS)
	}
	if err := cfg.Transport.check(); err != nil {
		return err
	}
	return cfg.checkNames()
}

// dial connects c and sends CONNECT; c.connected closes on CONNACK, or on
// SUBACK when c subscribes. Over TLS or WebSocket the TCP connection is
// made here and the handshakes and CONNECT in c's goroutine.
func (r *runner) dial(c *client, addr string) error {
	c.run = r
	c.connected = make(chan struct{})
	c.credit = make(chan struct{}, r.cfg.Window)
	for range r.cfg.Window {
		c.credit <- struct{}{}
	}
	c.tracks = map[uint32]*seqTrack{}
	if r.streams != nil {
		return r.streams.dial(c, addr, r.connectPacket(c))
	}
	gc, err := r.cli.DialContext("tcp", addr, c)
	if err != nil {
		return fmt.Errorf("cannot connect %s: %w", c.id, err)
	}
	c.conn = gc
	p := r.connectPacket(c)
	c.connectAt.Store(time.Now().UnixNano())
	return gc.AsyncWrite(p, nil)
}

// keepAlive is the keepalive CONNECT asks for, in seconds.
func (cfg *Config) keepAlive() uint16 {
	switch {
	case cfg.KeepAlive == 0:
		return 300
	case cfg.KeepAlive < 0:
		return 0
	}
	return uint16(min(cfg.KeepAlive/time.Second, 65535))
}

// connectPacket is c's CONNECT.
func (r *runner) connectPacket(c *client) []byte {
	name := []byte("MQTT")
	if c.v == codec.V31 {
		name = []byte("MQIsdp")
	}
	p := codec.Connect{ProtocolName: name, ProtocolVersion: c.v, CleanStart: true, KeepAlive: r.cfg.keepAlive(), ClientID: []byte(c.id)}
	if c.user != "" {
		p.UsernameFlag, p.Username = true, []byte(c.user)
	}
	if r.cfg.Password != "" {
		p.PasswordFlag, p.Password = true, []byte(r.cfg.Password)
	}
	if c.v == codec.V5 {
		p.Props.ReceiveMaximum = 65535
		p.Props.Set(codec.PropReceiveMaximum)
		if r.cfg.SessionExpiry > 0 {
			p.Props.SessionExpiry = uint32(r.cfg.SessionExpiry / time.Second)
			p.Props.Set(codec.PropSessionExpiry)
		}
	} else if r.cfg.SessionExpiry > 0 {
		p.CleanStart = false
	}
	return p.Append(nil, c.v)
}

func (r *runner) awaitConnected(ctx context.Context, cs []*client) error {
	for _, c := range cs {
		select {
		case <-c.connected:
			if c.refusal.Load() != 0 {
				// The others' answers are on their way: wait for them, so
				// that the error counts every refusal.
				_ = r.settle(ctx, cs)
				return r.refusalError()
			}
			if c.closed.Load() {
				r.errMu.Lock()
				defer r.errMu.Unlock()
				return fmt.Errorf("%s: connection closed during setup: %v", c.id, r.errors)
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(setupTimeout):
			return fmt.Errorf("%s: no CONNACK/SUBACK within %v", c.id, setupTimeout)
		}
	}
	return nil
}

// plan builds the clients of a traffic scenario: who publishes where and
// who subscribes to what.
func (r *runner) plan() (pubs, subs []*client, err error) {
	cfg := &r.cfg
	v := cfg.Version
	sub := func(id string, i int, filters ...string) *client {
		c := &client{id: cfg.clientID(id), v: v, user: cfg.username(i)}
		for _, f := range filters {
			c.subscribe = append(c.subscribe, codec.Subscription{Filter: []byte(f), QoS: cfg.QoS})
		}
		subs = append(subs, c)
		return c
	}
	pub := func(id string, i int, topic string) *client {
		c := &client{id: cfg.clientID(id), v: v, user: cfg.username(i), topic: []byte(topic), idx: uint32(len(pubs))}
		pubs = append(pubs, c)
		return c
	}
	switch cfg.Scenario {
	case "fanin":
		sub("bench-sub-0", 0, "bench/fanin/#")
		for i := range cfg.Publishers {
			pub(fmt.Sprintf("bench-pub-%d", i), i, fmt.Sprintf("bench/fanin/%d", i))
		}
	case "fanout":
		for i := range cfg.Subscribers {
			sub(fmt.Sprintf("bench-sub-%d", i), i, "bench/fanout")
		}
		for i := range cfg.Publishers {
			pub(fmt.Sprintf("bench-pub-%d", i), i, "bench/fanout")
		}
	case "p2p", "cluster":
		topics := map[string]bool{}
		for i := range cfg.Clients {
			topic := expand(cmp.Or(cfg.Topic, "bench/p2p/%d"), i, cfg.username(i))
			if topics[topic] {
				return nil, nil, fmt.Errorf("--topic %q gives pairs %d and others the same topic %q: every pair needs its own", cfg.Topic, i, topic)
			}
			topics[topic] = true
			sub(fmt.Sprintf("bench-sub-%d", i), i, topic)
			pub(fmt.Sprintf("bench-pub-%d", i), i, topic)
		}
	case "stresser":
		// One connection per client publishes to its own topic and
		// subscribes to it.
		topics := map[string]bool{}
		for i := range cfg.Clients {
			topic := expand(cmp.Or(cfg.Topic, "bench/stress/%d"), i, cfg.username(i))
			if topics[topic] {
				return nil, nil, fmt.Errorf("--topic %q gives clients %d and others the same topic %q: every client needs its own", cfg.Topic, i, topic)
			}
			topics[topic] = true
			c := pub(fmt.Sprintf("bench-stress-%d", i), i, topic)
			c.subscribe = []codec.Subscription{{Filter: c.topic, QoS: cfg.QoS}}
			subs = append(subs, c)
		}
	case "shared":
		shared := &sharedTrack{t: map[uint32]*seqTrack{}}
		for i := range cfg.Subscribers {
			sub(fmt.Sprintf("bench-member-%d", i), i, "$share/bench/bench/shared/#").shared = shared
		}
		for i := range cfg.Publishers {
			pub(fmt.Sprintf("bench-pub-%d", i), i, fmt.Sprintf("bench/shared/%d", i))
		}
	case "retained":
		cfg.Retain = true
		for i := range cfg.Subscribers {
			sub(fmt.Sprintf("bench-sub-%d", i), i, "bench/retained/#")
		}
		for i := range cfg.Publishers {
			pub(fmt.Sprintf("bench-pub-%d", i), i, fmt.Sprintf("bench/retained/%d", i))
		}
	default:
		return nil, nil, fmt.Errorf("unknown scenario %q: want conn, fanin, fanout, p2p, stresser, retained, shared or cluster", cfg.Scenario)
	}
	return pubs, subs, nil
}

// receiversPerMessage is how many deliveries each published message owes.
func (r *runner) receiversPerMessage(subs []*client) int64 {
	switch r.cfg.Scenario {
	case "fanout", "retained":
		return int64(len(subs))
	}
	return 1 // fanin, p2p, stresser, cluster, shared (one member)
}

func (r *runner) traffic(ctx context.Context) (*Result, error) {
	cfg := &r.cfg
	pubs, subs, err := r.plan()
	if err != nil {
		return nil, err
	}
	if len(pubs) == 0 || len(subs) == 0 {
		return nil, errors.New("the scenario needs at least one publisher and one subscriber")
	}
	r.pubSeq = make([]atomic.Uint64, len(pubs))
	// Subscribers first, so that nothing is published before they listen.
	seen := map[*client]bool{}
	subAddrs := strings.Split(cfg.SubAddr, ",")
	for i, c := range subs {
		seen[c] = true
		if err := r.dial(c, subAddrs[i%len(subAddrs)]); err != nil {
			return nil, err
		}
	}
	if err := r.awaitConnected(ctx, subs); err != nil {
		return nil, err
	}
	for _, c := range pubs {
		if !seen[c] {
			if err := r.dial(c, cfg.Addr); err != nil {
				return nil, err
			}
		}
	}
	if err := r.awaitConnected(ctx, pubs); err != nil {
		return nil, err
	}

	limiter := &rateLimiter{}
	if cfg.Rate > 0 {
		limiter.every = time.Second / time.Duration(cfg.Rate)
		limiter.next.Store(time.Now().UnixNano())
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if cfg.Rate > 0 && cfg.Tick > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.pace(pubs, stop, cfg.Count)
		}()
	} else {
		for _, c := range pubs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.publish(stop, limiter, cfg.Count)
			}()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// Warm up, then measure a window.
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	waitUntil := func(d time.Duration) bool {
		end := time.After(d)
		for {
			select {
			case <-end:
				return true
			case <-done:
				return false
			case <-ctx.Done():
				return false
			case <-progress.C:
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "\rsent %d  received %d  errors %d   ", r.sent.Load(), r.received.Load(), len(r.errors))
				}
			}
		}
	}
	if cfg.Warmup > 0 {
		waitUntil(cfg.Warmup)
	}
	var before ProcSample
	if cfg.BrokerPID > 0 {
		if before, err = SampleProc(cfg.BrokerPID); err != nil {
			return nil, err
		}
	}
	tool0 := SelfCPU()
	start := time.Now()
	r.measuring.Store(true)
	if cfg.Duration > 0 {
		waitUntil(cfg.Duration)
	} else {
		<-done
	}
	r.measuring.Store(false)
	window := time.Since(start)
	toolCPU := SelfCPU() - tool0
	var after ProcSample
	if cfg.BrokerPID > 0 {
		if after, err = SampleProc(cfg.BrokerPID); err != nil {
			return nil, err
		}
	}
	close(stop)
	<-done

	// Drain: wait until every owed delivery arrived or the drain time ends.
	per := r.receiversPerMessage(subs)
	expected := func() int64 {
		var n int64
		for i := range r.pubSeq {
			n += int64(r.pubSeq[i].Load())
		}
		return n * per
	}
	deadline := time.Now().Add(cfg.Drain)
	for r.received.Load() < expected() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling counters fed by the event loops
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}

	res := &Result{
		Scenario: cfg.Scenario, Clients: cfg.Clients, Publishers: len(pubs), Subscribers: len(subs),
		QoS: cfg.QoS, Payload: cfg.Payload, Window: window,
		Sent: r.sent.Load(), Received: r.received.Load(), Expected: expected(), Duplicates: r.dups.Load(),
		SentRate: float64(r.windowSent.Load()) / window.Seconds(), RecvRate: float64(r.windowRecv.Load()) / window.Seconds(),
		LossAllowed: cfg.QoS == 0, ToolCPU: toolCPU,
	}
	res.Lost = max(res.Expected-res.Received, 0)
	for c := range seen {
		res.Errors += c.errs.Load()
	}
	for _, c := range pubs {
		if !seen[c] {
			res.Errors += c.errs.Load()
		}
	}
	res.FirstErrors = r.errors
	r.histMu.Lock()
	us := time.Microsecond
	res.P50 = time.Duration(r.hist.ValueAtQuantile(50)) * us
	res.P90 = time.Duration(r.hist.ValueAtQuantile(90)) * us
	res.P99 = time.Duration(r.hist.ValueAtQuantile(99)) * us
	res.P999 = time.Duration(r.hist.ValueAtQuantile(99.9)) * us
	r.histMu.Unlock()
	if w := r.windowRecv.Load(); w > 0 {
		res.ToolUsPer = float64(toolCPU.Microseconds()) / float64(w)
		if cfg.BrokerPID > 0 {
			res.BrokerCPU = after.CPU - before.CPU
			res.BrokerUsPer = float64(res.BrokerCPU.Microseconds()) / float64(w)
			res.BrokerRSS, res.BrokerPeak = after.RSS, after.Peak
		}
	}
	return res, nil
}

// Print writes the result as a table.
func (res *Result) Print(w io.Writer) {
	row := func(k string, v any) { fmt.Fprintf(w, "%-26s %v\n", k, v) }
	row("scenario", res.Scenario)
	if res.Transport != "" {
		row("transport", res.Transport)
	}
	if res.TLSResumed > 0 {
		row("TLS sessions resumed", res.TLSResumed)
	}
	if res.Scenario == "conn" {
		row("connections", fmt.Sprintf("%d of %d in %v", res.Connected, res.Clients, res.Window.Round(time.Millisecond)))
		row("connect rate (/s)", fmt.Sprintf("%.0f", res.ConnectRate))
		row("CONNACK p50/p90/p99/p99.9", fmt.Sprintf("%v / %v / %v / %v (max %v)", res.P50, res.P90, res.P99, res.P999, res.Max))
		row("refused", res.Refused)
		keys := slices.Sorted(maps.Keys(res.RefusedBy))
		for _, k := range keys {
			row("  CONNACK "+k, res.RefusedBy[k])
		}
		row("no CONNACK", res.Unanswered)
		if res.BrokerCPU > 0 {
			row("broker CPU µs/conn", fmt.Sprintf("%.1f", res.BrokerUsPer))
			row("broker RSS", mib(res.BrokerRSS))
			row("broker RSS per conn", fmt.Sprintf("%.0f B", res.RSSPerConn))
			if res.RSSPerOffline != 0 {
				row("broker RSS per offline session", fmt.Sprintf("%.0f B", res.RSSPerOffline))
			}
		}
		row("tool CPU µs/conn", fmt.Sprintf("%.1f", res.ToolUsPer))
		row("errors", res.Errors)
		for _, e := range res.FirstErrors {
			row("error", e)
		}
		return
	}
	row("publishers/subscribers", fmt.Sprintf("%d/%d", res.Publishers, res.Subscribers))
	row("qos, payload", fmt.Sprintf("%d, %d B", res.QoS, res.Payload))
	row("measured for", res.Window.Round(time.Millisecond))
	row("sent/s", fmt.Sprintf("%.0f", res.SentRate))
	row("received/s", fmt.Sprintf("%.0f", res.RecvRate))
	row("latency p50/p90/p99/p99.9", fmt.Sprintf("%v / %v / %v / %v", res.P50, res.P90, res.P99, res.P999))
	row("sent, received, expected", fmt.Sprintf("%d, %d, %d", res.Sent, res.Received, res.Expected))
	row("lost, duplicates, errors", fmt.Sprintf("%d, %d, %d", res.Lost, res.Duplicates, res.Errors))
	if res.BrokerCPU > 0 {
		row("broker CPU", res.BrokerCPU.Round(time.Millisecond))
		row("broker CPU µs/msg", fmt.Sprintf("%.2f", res.BrokerUsPer))
		row("broker RSS (peak)", mib(res.BrokerRSS)+" ("+mib(res.BrokerPeak)+")")
	}
	row("tool CPU µs/msg", fmt.Sprintf("%.2f", res.ToolUsPer))
	for _, e := range res.FirstErrors {
		row("error", e)
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// quietLogger keeps gnet's informational lines off stdout, where the
// report (and its JSON) goes; errors still reach stderr.
type quietLogger struct{}

func (quietLogger) Debugf(string, ...any)     {}
func (quietLogger) Infof(string, ...any)      {}
func (quietLogger) Warnf(f string, a ...any)  { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...) }
func (quietLogger) Errorf(f string, a ...any) { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...) }
func (quietLogger) Fatalf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...)
	os.Exit(2)
}

// clientID is id with "bench-" replaced by IDPrefix, when one is set.
func (c *Config) clientID(id string) string {
	if c.IDPrefix == "" {
		return id
	}
	return c.IDPrefix + strings.TrimPrefix(id, "bench-")
}
