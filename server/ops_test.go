package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// startBrokerRetry is startBroker, tried again when Start fails because the
// MQTT port was taken. Start resolves ":0" by listening, closing and letting
// gnet bind the same port again; another socket can take the port in
// between, which happens when many connections come and go, or when
// several test processes run at once.
func startBrokerRetry(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	for attempt := 1; ; attempt++ {
		cfg := DefaultConfig()
		cfg.Listen = "127.0.0.1:0"
		cfg.HTTPListen = "127.0.0.1:0"
		cfg.DataDir = t.TempDir()
		cfg.EventLoops = 2
		cfg.SysInterval = 0
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if mutate != nil {
			mutate(&cfg)
		}
		s, err := New(cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		err = s.Start()
		if err == nil {
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = s.Shutdown(ctx)
			})
			return s
		}
		inUse := errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
		if !inUse || attempt == 3 {
			t.Fatalf("Start: %v", err)
		}
		t.Logf("Start, attempt %d: %v; trying another port", attempt, err)
	}
}

// opsSysTopics are the statistics sys.go publishes, in the order it publishes
// them each round.
var opsSysTopics = []string{
	"$SYS/broker/version",
	"$SYS/broker/uptime",
	"$SYS/broker/clients/connected",
	"$SYS/broker/clients/total",
	"$SYS/broker/messages/received",
	"$SYS/broker/messages/sent",
	"$SYS/broker/messages/dropped",
	"$SYS/broker/bytes/received",
	"$SYS/broker/bytes/sent",
	"$SYS/broker/subscriptions/count",
	"$SYS/broker/retained messages/count",
}

// opsSysRound is one round of $SYS statistics, every numeric value parsed.
type opsSysRound map[string]int64

// opsSubscribe subscribes rc and checks that every filter is granted.
func opsSubscribe(t *testing.T, rc *rawConn, qos byte, filters ...string) {
	t.Helper()
	sub := &codec.Subscribe{PacketID: rc.nextID()}
	for _, f := range filters {
		sub.Subs = append(sub.Subs, codec.Subscription{Filter: []byte(f), QoS: qos})
	}
	rc.send(sub)
	sa, ok := rc.expect().(*codec.Suback)
	if !ok || sa.PacketID != sub.PacketID || len(sa.Codes) != len(filters) {
		t.Fatalf("got %+v, want SUBACK for %q", sa, filters)
	}
	for i, c := range sa.Codes {
		if c != codec.ReasonCode(qos) {
			t.Fatalf("filter %q refused: %v", filters[i], c)
		}
	}
}

// opsNextSysRound reads rc until it has one whole round of live $SYS
// publishes: the round starts with the version and has every topic of
// opsSysTopics, in order. Retained copies (sent on subscribe) are skipped.
func opsNextSysRound(t *testing.T, rc *rawConn) opsSysRound {
	t.Helper()
	var r opsSysRound
	for {
		p, ok := rc.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("$SYS subscriber got %T, want PUBLISH", p)
		}
		if p.Retain {
			continue
		}
		topic := string(p.Topic)
		if topic == opsSysTopics[0] {
			if string(p.Payload) != "gannet" {
				t.Fatalf("%s = %q", topic, p.Payload)
			}
			r = opsSysRound{}
			continue
		}
		if r == nil {
			continue // joined mid-round
		}
		if want := opsSysTopics[len(r)+1]; topic != want {
			t.Fatalf("$SYS round out of order: got %s, want %s", topic, want)
		}
		v, err := strconv.ParseInt(string(p.Payload), 10, 64)
		if err != nil || v < 0 {
			t.Fatalf("%s = %q, want a count", topic, p.Payload)
		}
		r[topic] = v
		if len(r) == len(opsSysTopics)-1 {
			return r
		}
	}
}

// opsSysRoundWhere reads rounds until one satisfies ok, failing after 5 s.
func opsSysRoundWhere(t *testing.T, rc *rawConn, what string, ok func(opsSysRound) bool) opsSysRound {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := opsNextSysRound(t, rc)
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("no $SYS round with %s within 5s; last: %v", what, r)
		}
	}
}

// $SYS/broker statistics are published every SysInterval to subscribers
// of $SYS/#, count what happened, and never reach a filter that starts
// with a wildcard [MQTT-4.7.2-1].
func TestOpsSysStatistics(t *testing.T) {
	t.Parallel()
	before := time.Now()
	s := startBrokerRetry(t, func(c *Config) { c.SysInterval = 100 * time.Millisecond })

	sys := dialRaw(t, s, codec.V5)
	sys.connect("ops-sys", nil)
	opsSubscribe(t, sys, 0, "$SYS/#")
	wild := dialRaw(t, s, codec.V5)
	wild.connect("ops-wild", nil)
	opsSubscribe(t, wild, 0, "#", "+/broker/#", "+/+/clients/connected")
	// The $SYS values are retained, but a leading wildcard does not match
	// them: nothing arrives on subscribe [MQTT-4.7.2-1].
	if got := wild.ping(); len(got) != 0 {
		t.Fatalf("wildcard subscriber got retained %q", got[0].(*codec.Publish).Topic)
	}

	// Two clients connected with their four subscriptions; nothing
	// published yet. Rounds from before the second subscribed may still be
	// in the socket.
	r0 := opsSysRoundWhere(t, sys, "2 clients and 4 subscriptions", func(r opsSysRound) bool {
		if r["$SYS/broker/clients/connected"] > 2 || r["$SYS/broker/subscriptions/count"] > 4 {
			t.Fatalf("counted more than there is: %v", r)
		}
		return r["$SYS/broker/clients/connected"] == 2 && r["$SYS/broker/subscriptions/count"] == 4
	})
	if up := r0["$SYS/broker/uptime"]; float64(up) > math.Ceil(time.Since(before).Seconds()) {
		t.Errorf("uptime %ds, but the broker started %v ago", up, time.Since(before))
	}
	for k, want := range map[string]int64{
		"$SYS/broker/clients/total":     2,
		"$SYS/broker/messages/received": 0,
		"$SYS/broker/messages/dropped":  0,
		// The statistics themselves are retained.
		"$SYS/broker/retained messages/count": int64(len(opsSysTopics)),
	} {
		if r0[k] != want {
			t.Errorf("%s = %d, want %d", k, r0[k], want)
		}
	}
	if r0["$SYS/broker/messages/sent"] == 0 || r0["$SYS/broker/bytes/sent"] == 0 || r0["$SYS/broker/bytes/received"] == 0 {
		t.Errorf("nothing counted as sent or received: %v", r0)
	}

	// A 3.1.1 publisher and a v5 client that accepts packets of at most
	// 64 bytes join; four messages go out, one of them too large for the
	// small client, which drops it [MQTT-3.1.2-25].
	pub := dialRaw(t, s, codec.V311)
	pub.connect("ops-pub", nil)
	tiny := dialRaw(t, s, codec.V5)
	tiny.connect("ops-tiny", func(p *codec.Connect) {
		p.Props.MaximumPacketSize = 64
		p.Props.Set(codec.PropMaximumPacketSize)
	})
	opsSubscribe(t, tiny, 0, "ops/big")
	var inBytes int
	publish := func(p *codec.Publish) {
		inBytes += p.Size(codec.V311)
		pub.send(p)
		if p.QoS == 1 {
			if a, ok := pub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBACK || a.PacketID != p.PacketID {
				t.Fatalf("got %+v, want PUBACK %d", a, p.PacketID)
			}
		}
	}
	for i := range 3 {
		publish(&codec.Publish{QoS: 1, PacketID: uint16(i + 1), Topic: []byte("ops/x"), Payload: []byte("0123456789")})
	}
	publish(&codec.Publish{Topic: []byte("ops/big"), Payload: make([]byte, 200)})
	// A QoS 1 fence: its PUBACK means the QoS 0 message before it was
	// handled too.
	publish(&codec.Publish{QoS: 1, PacketID: 9, Topic: []byte("ops/fence"), Payload: []byte("f")})

	r1 := opsSysRoundWhere(t, sys, "4 clients and 5 messages received", func(r opsSysRound) bool {
		if r["$SYS/broker/messages/received"] > 5 || r["$SYS/broker/clients/connected"] > 4 {
			t.Fatalf("counted more than happened: %v", r)
		}
		return r["$SYS/broker/clients/connected"] == 4 && r["$SYS/broker/messages/received"] == 5
	})
	for k, want := range map[string]int64{
		"$SYS/broker/clients/total":       4,
		"$SYS/broker/messages/dropped":    1,
		"$SYS/broker/subscriptions/count": 5,
	} {
		if r1[k] != want {
			t.Errorf("%s = %d, want %d", k, r1[k], want)
		}
	}
	for _, k := range []string{"$SYS/broker/bytes/received", "$SYS/broker/bytes/sent", "$SYS/broker/messages/sent"} {
		if r1[k] <= r0[k] {
			t.Errorf("%s did not grow: %d then %d", k, r0[k], r1[k])
		}
	}
	if got := r1["$SYS/broker/bytes/received"] - r0["$SYS/broker/bytes/received"]; got < int64(inBytes) {
		t.Errorf("bytes received grew by %d, but the publisher alone sent %d", got, inBytes)
	}
	// The wildcard subscriber got the five messages, and a round of $SYS
	// went out after it subscribed, yet none reached it.
	if r1["$SYS/broker/uptime"] < r0["$SYS/broker/uptime"] {
		t.Errorf("uptime went back from %d to %d", r0["$SYS/broker/uptime"], r1["$SYS/broker/uptime"])
	}
	var topics []string
	for _, p := range drain(pub, wild, "ops/marker") {
		topics = append(topics, string(p.Topic))
	}
	if want := "ops/x ops/x ops/x ops/big ops/fence"; strings.Join(topics, " ") != want {
		t.Fatalf("wildcard subscriber got %q, want %q", topics, want)
	}

	// Clients leave; the count follows.
	pub.send(&codec.Disconnect{})
	tiny.send(&codec.Disconnect{})
	opsSysRoundWhere(t, sys, "2 clients connected again", func(r opsSysRound) bool {
		return r["$SYS/broker/clients/connected"] == 2
	})
	if got := drain(sys, wild, "ops/marker"); len(got) != 0 {
		t.Fatalf("wildcard subscriber got %q", got[0].Topic)
	}
}

// A client that subscribes to a $SYS topic between two rounds gets the
// last values at once, flagged retained [MQTT-3.3.1-9]; live rounds reach
// existing subscribers with the flag clear [MQTT-3.3.1-12].
func TestOpsSysRetained(t *testing.T) {
	t.Parallel()
	s := startBrokerRetry(t, func(c *Config) { c.SysInterval = 100 * time.Millisecond })
	first := dialRaw(t, s, codec.V5)
	first.connect("ops-first", nil)
	opsSubscribe(t, first, 0, "$SYS/broker/clients/connected")
	// A live round that counts the first client.
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := first.expect().(*codec.Publish)
		if !p.Retain && string(p.Payload) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no live $SYS round counting one client within 5s")
		}
	}
	late := dialRaw(t, s, codec.V311)
	late.connect("ops-late", nil)
	opsSubscribe(t, late, 1, "$SYS/broker/clients/connected", "$SYS/broker/version")
	got := map[string]string{}
	for range 2 {
		p := late.expect().(*codec.Publish)
		if !p.Retain {
			t.Fatalf("late subscriber got %s live before the retained copy", p.Topic)
		}
		if p.QoS != 0 {
			t.Errorf("%s at QoS %d, published at QoS 0", p.Topic, p.QoS)
		}
		got[string(p.Topic)] = string(p.Payload)
	}
	if got["$SYS/broker/version"] != "gannet" {
		t.Errorf("retained version %q", got["$SYS/broker/version"])
	}
	if n, err := strconv.Atoi(got["$SYS/broker/clients/connected"]); err != nil || n < 1 || n > 2 {
		t.Errorf("retained clients/connected %q, want 1 or 2", got["$SYS/broker/clients/connected"])
	}
}

// With SysInterval 0 nothing is published under $SYS.
func TestOpsSysDisabled(t *testing.T) {
	t.Parallel()
	s := startBrokerRetry(t, func(c *Config) { c.SysInterval = 0 })
	rc := dialRaw(t, s, codec.V5)
	rc.connect("ops-nosys", nil)
	opsSubscribe(t, rc, 0, "$SYS/#")
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("got %q with $SYS disabled", got[0].(*codec.Publish).Topic)
	}
	if n := s.retained.len(); n != 0 {
		t.Fatalf("%d retained messages with $SYS disabled", n)
	}
}

// opsHTTP is a client that keeps no idle connections behind.
var opsHTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func opsGet(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := opsHTTP.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// opsPromLine is one sample line of the Prometheus text format.
var opsPromLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$`)

// opsScrape fetches /metrics, checks that every line is a comment or a valid
// sample, and returns the samples by name (labels included).
func opsScrape(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	code, body, hdr := opsGet(t, "http://"+s.HTTPAddr()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics Content-Type %q, want text/plain", ct)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		m := opsPromLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("/metrics line %q is not in the Prometheus text format", line)
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		if _, dup := out[m[1]]; dup {
			t.Fatalf("/metrics has %s twice", m[1])
		}
		out[m[1]] = v
	}
	return out
}

func opsSample(t *testing.T, m map[string]float64, name string) float64 {
	t.Helper()
	v, ok := m[name]
	if !ok {
		t.Fatalf("/metrics lacks %s", name)
	}
	return v
}

// /metrics serves the broker's gauges and counters in the Prometheus text
// format, and they follow what clients do.
func TestOpsMetrics(t *testing.T) {
	t.Parallel()
	s := startBrokerRetry(t, nil)
	m0 := opsScrape(t, s)
	for _, name := range []string{"gannet_clients_connected", "gannet_connections", "gannet_sessions", "gannet_subscriptions"} {
		if v := opsSample(t, m0, name); v != 0 {
			t.Errorf("%s = %v before any client, want 0", name, v)
		}
	}
	for _, name := range []string{"gannet_messages_received_total", "gannet_messages_sent_total",
		"gannet_bytes_received_total", "gannet_bytes_sent_total", "gannet_writes_total", "gannet_uptime_seconds",
		`gannet_messages_dropped_total{reason="too_large"}`, "process_resident_memory_bytes"} {
		opsSample(t, m0, name)
	}

	sub := dialRaw(t, s, codec.V5)
	sub.connect("m-sub", nil)
	opsSubscribe(t, sub, 1, "m/#")
	pub := dialRaw(t, s, codec.V311)
	pub.connect("m-pub", nil)
	// A connection that has not sent CONNECT is a connection, not a client.
	idle, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	var m1 map[string]float64
	waitFor(t, "the idle connection to be counted", func() bool {
		m1 = opsScrape(t, s)
		return m1["gannet_connections"] == 3
	})
	if v := opsSample(t, m1, "gannet_clients_connected"); v != 2 {
		t.Errorf("gannet_clients_connected = %v, want 2", v)
	}
	if v := opsSample(t, m1, "gannet_subscriptions"); v != 1 {
		t.Errorf("gannet_subscriptions = %v, want 1", v)
	}
	if v := opsSample(t, m1, "gannet_sessions"); v != 2 {
		t.Errorf("gannet_sessions = %v, want 2", v)
	}

	const n = 5
	var inBytes, outBytes int
	for i := range n {
		p := &codec.Publish{QoS: 1, PacketID: uint16(i + 1), Topic: []byte("m/a"), Payload: []byte(strings.Repeat("x", 100))}
		inBytes += p.Size(codec.V311)
		pub.send(p)
		if a, ok := pub.expect().(*codec.Ack); !ok || a.PacketID != p.PacketID {
			t.Fatalf("got %+v, want PUBACK %d", a, p.PacketID)
		}
		got, ok := sub.expect().(*codec.Publish)
		if !ok || len(got.Payload) != 100 {
			t.Fatalf("subscriber got %+v", got)
		}
		outBytes += got.Size(codec.V5)
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: got.PacketID})
	}
	pub.send(&codec.Publish{QoS: 1, PacketID: 99, Topic: []byte("nobody/listens"), Payload: []byte("x")})
	pub.expect()

	m2 := opsScrape(t, s)
	for name, want := range map[string]float64{
		"gannet_messages_received_total":       m1["gannet_messages_received_total"] + n + 1,
		"gannet_messages_sent_total":           m1["gannet_messages_sent_total"] + n,
		"gannet_messages_no_subscribers_total": m1["gannet_messages_no_subscribers_total"] + 1,
	} {
		if v := opsSample(t, m2, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if got := opsSample(t, m2, "gannet_bytes_received_total") - m1["gannet_bytes_received_total"]; got < float64(inBytes) {
		t.Errorf("gannet_bytes_received_total grew by %v, want at least %d", got, inBytes)
	}
	if got := opsSample(t, m2, "gannet_bytes_sent_total") - m1["gannet_bytes_sent_total"]; got < float64(outBytes) {
		t.Errorf("gannet_bytes_sent_total grew by %v, want at least %d", got, outBytes)
	}

	// A client leaves: the gauges drop.
	pub.send(&codec.Disconnect{})
	_ = idle.Close()
	waitFor(t, "the clients that left to be uncounted", func() bool {
		m := opsScrape(t, s)
		return m["gannet_clients_connected"] == 1 && m["gannet_connections"] == 1
	})
}

// /healthz is 200 while the process runs. /readyz is 200 while the broker
// accepts clients, and stops being 200 as soon as Shutdown begins, before
// clients are disconnected, so that a load balancer sends no new ones.
func TestOpsHealthAndReadiness(t *testing.T) {
	t.Parallel()
	s := startBrokerRetry(t, nil)
	base := "http://" + s.HTTPAddr()
	if code, body, _ := opsGet(t, base+"/healthz"); code != http.StatusOK || body == "" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _, _ := opsGet(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d while serving", code)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := opsHTTP.Post(base+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 405", path, resp.StatusCode)
		}
	}

	rc := dialRaw(t, s, codec.V5)
	rc.connect("ops-ready", nil)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	// The client hears DISCONNECT 0x8B; readiness was withdrawn before it.
	got := rc.expectClosed()
	if len(got) != 1 || biRespOf(got[0]) != biDisc(codec.ServerShuttingDown)[0] {
		t.Fatalf("client got %v, want DISCONNECT 0x8B", got)
	}
	// The HTTP listener outlives the MQTT engine's stop, which takes a
	// poll interval of gnet's; both answers come from inside Shutdown.
	code, _, _ := opsGet(t, base+"/readyz")
	if code == http.StatusOK {
		t.Fatal("/readyz is 200 while shutting down")
	}
	if code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d while shutting down, want 503", code)
	}
	if code, _, _ := opsGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d while the process runs", code)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
