package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gannetmq/gannet/codec"
)

// expectRefused asserts that a CONNECT on a new connection from local
// (nil: any) is answered with code and the connection closed.
func expectRefused(t *testing.T, s *Server, local net.Addr, v codec.Version, code codec.ReasonCode) {
	t.Helper()
	rc := dialRawFrom(t, s, local, v)
	if ca := rc.connect("refused-"+v.String(), nil); ca.Code != code {
		t.Fatalf("%s: CONNACK %v, want %v", v, ca.Code, code)
	}
	rc.expectClosed()
}

// dialRawFrom is dialRaw from the local address local (nil: any).
func dialRawFrom(t *testing.T, s *Server, local net.Addr, v codec.Version) *rawConn {
	t.Helper()
	d := net.Dialer{LocalAddr: local}
	c, err := d.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c), v: v}
}

// expectClosedUnread asserts the broker closes c without sending a byte.
func expectClosedUnread(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 16))
	if n != 0 || err == nil {
		t.Fatalf("read %d bytes, %v; want the connection closed", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection still open after 5s")
	}
}

// --max-connections: past it a CONNECT gets quota exceeded (3 for MQTT
// 3), counted; the clients already in notice nothing, and a place freed
// is taken by the next one.
func TestMaxConnections(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxConnections = 2 })
	a := dialRaw(t, s, codec.V5)
	a.connect("a", nil)
	b := dialRaw(t, s, codec.V311)
	b.connect("b", nil)
	expectRefused(t, s, nil, codec.V5, codec.QuotaExceeded)
	expectRefused(t, s, nil, codec.V311, codec.V3ServerUnavailable)
	if got := s.adm.refused[refusedMax].Get(); got != 2 {
		t.Fatalf("refused for max_connections: %d, want 2", got)
	}
	a.ping()
	b.ping()
	_ = b.c.Close()
	waitFor(t, "b's place freed", func() bool { return s.adm.admitted.Load() == 1 })
	c := dialRaw(t, s, codec.V5)
	if ca := c.connect("c", nil); ca.Code != codec.Success {
		t.Fatalf("after a place was freed: CONNACK %v", ca.Code)
	}
	waitFor(t, "refused connections released", func() bool { return s.adm.refusing.Load() == 0 })
}

// --max-connections-per-ip counts by source address: a second address
// is not held back by the first.
func TestMaxConnectionsPerIP(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxConnectionsPerIP = 2 })
	one := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	two := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	for i := range 2 {
		dialRawFrom(t, s, one, codec.V5).connect("one-"+string(rune('a'+i)), nil)
	}
	expectRefused(t, s, one, codec.V5, codec.QuotaExceeded)
	if ca := dialRawFrom(t, s, two, codec.V5).connect("two", nil); ca.Code != codec.Success {
		t.Fatalf("another address: CONNACK %v", ca.Code)
	}
	if got := s.adm.refused[refusedPerIP].Get(); got != 1 {
		t.Fatalf("refused for max_connections_per_ip: %d, want 1", got)
	}
}

// --max-connection-rate closes a connection past the rate before reading
// anything, on the plain and on the TLS listener (before the handshake);
// the connection admitted keeps working.
func TestMaxConnectionRate(t *testing.T) {
	pki := newTestPKI(t, "Gannet Test CA")
	// One connection per listener, then one per 1000 s.
	s := tlsBroker(t, pki, false, func(c *Config) { c.MaxConnectionRate = 0.001 })
	ok := dialRaw(t, s, codec.V5)
	ok.connect("first", nil)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectClosedUnread(t, c)
	ok.ping()

	first := dialTLSRaw(t, s, tlsClientConfig(pki, nil), codec.V5)
	first.connect("tls-first", nil)
	_, err = tls.Dial("tcp", s.TLSAddr(), tlsClientConfig(pki, nil))
	if err == nil || !(errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset")) {
		t.Fatalf("TLS dial past the rate: %v, want the connection closed", err)
	}
	first.ping()
	if got := s.adm.refused[refusedRate].Get(); got != 2 {
		t.Fatalf("refused for connection_rate: %d, want 2", got)
	}
}

// Near the open-file limit a connection is closed before it is read;
// the broker goes on serving the ones it has.
func TestOpenFileLimitGuard(t *testing.T) {
	s := startBroker(t, nil)
	held := dialRaw(t, s, codec.V5)
	held.connect("held", nil)
	s.adm.fdLimit.Store(s.stats.connections.Load() + fdReserve)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectClosedUnread(t, c)
	if got := s.adm.refused[refusedFDs].Get(); got != 1 {
		t.Fatalf("refused for open_file_limit: %d, want 1", got)
	}
	held.ping()
}

// The log of connections is throttled per kind: a flood of one refusal
// does not hide another kind, and the line after the flood says how many
// were left out.
func TestConnectionLogThrottled(t *testing.T) {
	th := newLogThrottle()
	for i := range connLogBurst {
		if ok, _ := th.allow("refusing connection\x00not authorized", connLogBurst); !ok {
			t.Fatalf("line %d of the burst dropped", i)
		}
	}
	for range 100 {
		if ok, _ := th.allow("refusing connection\x00not authorized", connLogBurst); ok {
			t.Fatal("a line past the burst let through")
		}
	}
	if ok, _ := th.allow("refusing connection\x00bad PROXY header", connLogBurst); !ok {
		t.Fatal("another kind was held back by the flood")
	}
	k := th.kinds["refusing connection\x00not authorized"]
	k.start -= int64(logWindow) // the next window
	if ok, sup := th.allow("refusing connection\x00not authorized", connLogBurst); !ok || sup != 100 {
		t.Fatalf("first line of the next window: let through %v, suppressed %d; want true, 100", ok, sup)
	}
}

// A connection's log line below the log level costs nothing: a flood of
// refused connections with the log at warn built a logger with the
// client's attributes for each Info line nobody read. A line the level
// lets through still names the client and its address.
func TestConnectionLogBelowLevelAllocatesNothing(t *testing.T) {
	var out strings.Builder
	h := slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn})
	s := &Server{connLog: slog.New(throttledHandler{h, newLogThrottle(), connLogBurst})}
	c := &client{srv: s, id: "flooder-7"}
	c.setAddr(netip.MustParseAddrPort("192.0.2.7:40000"))
	if n := testing.AllocsPerRun(100, func() {
		c.logger().Info("refusing connection", "reason", "banned")
		c.logger().Debug("client connected")
	}); n != 0 {
		t.Errorf("Info and Debug lines below the level: %.0f allocations, want 0", n)
	}
	if out.Len() != 0 {
		t.Errorf("lines below the level written: %q", out.String())
	}
	c.logger().Warn("connection lost", "reason", "keepalive")
	for _, want := range []string{`msg="connection lost"`, "client=flooder-7", "remote=192.0.2.7:40000", "reason=keepalive"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("warning %q lacks %s", out.String(), want)
		}
	}
}

// Per-client limits: subscriptions per session, topic levels and length
// on SUBSCRIBE and PUBLISH (and the will), client id length; each refusal
// with its code and count, the other filters of a SUBSCRIBE unaffected.
func TestClientLimits(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.MaxSubscriptions = 3
		c.MaxTopicLevels = 4
		c.MaxTopicLength = 40
		c.MaxClientIDLength = 30
	})
	deep := "a/b/c/d/e"
	long := strings.Repeat("x", 41)
	for _, v := range []codec.Version{codec.V5, codec.V311} {
		t.Run(v.String(), func(t *testing.T) {
			v5 := v == codec.V5
			quota, badFilter, badTopic := codec.QuotaExceeded, codec.TopicFilterInvalid, codec.TopicNameInvalid
			if !v5 {
				quota, badFilter, badTopic = codec.V3SubackFailure, codec.V3SubackFailure, codec.Success
			}
			rc := dialRaw(t, s, v)
			rc.connect("limits-"+v.String(), nil)
			// At most 3 filters a SUBSCRIBE: more would end the connection
			// (TestSubscribeListingTooManyFilters).
			got := subscribeCodes(rc, "t/1", deep, "$share/g/"+deep)
			got = append(got, subscribeCodes(rc, long, "t/2", "a/b/c/d")...)
			got = append(got, subscribeCodes(rc, "t/3", "t/1")...)
			want := []codec.ReasonCode{codec.GrantedQoS1, badFilter, badFilter, badFilter, codec.GrantedQoS1,
				codec.GrantedQoS1, quota, codec.GrantedQoS1}
			if !slices.Equal(got, want) {
				t.Fatalf("SUBACK codes %v, want %v", got, want)
			}
			// QoS 1 to a topic too deep or too long: refused (MQTT 5) or
			// acknowledged (MQTT 3), and delivered to no one.
			for _, topic := range []string{deep, long} {
				rc.send(&codec.Publish{QoS: 1, PacketID: rc.nextID(), Topic: []byte(topic), Payload: []byte("x")})
				if ack, ok := rc.expect().(*codec.Ack); !ok || ack.Code != badTopic {
					t.Fatalf("PUBLISH to %q: %v, want PUBACK %v", topic, ack, badTopic)
				}
			}
			rc.send(&codec.Publish{QoS: 1, PacketID: rc.nextID(), Topic: []byte("a/b/c/d"), Payload: []byte("ok")})
			var delivered []string
			for _, p := range append([]codec.Packet{rc.expect()}, rc.ping()...) {
				if pub, ok := p.(*codec.Publish); ok {
					delivered = append(delivered, string(pub.Topic))
				}
			}
			if !slices.Equal(delivered, []string{"a/b/c/d"}) {
				t.Fatalf("delivered %q, want only a/b/c/d", delivered)
			}

			// A client id over the limit.
			code := codec.ClientIdentifierNotValid
			if !v5 {
				code = codec.V3IdentifierRejected
			}
			bad := dialRaw(t, s, v)
			if ca := bad.connect(strings.Repeat("i", 31), nil); ca.Code != code {
				t.Fatalf("long client id: CONNACK %v, want %v", ca.Code, code)
			}
			bad.expectClosed()
			// A will topic over the limit.
			will := dialRaw(t, s, v)
			will.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: v, CleanStart: true, KeepAlive: 30,
				ClientID: []byte("will-" + v.String()), WillFlag: true, WillTopic: []byte(deep), WillPayload: []byte("w")})
			pkts := will.expectClosed()
			if v5 && (len(pkts) != 1 || pkts[0].(*codec.Connack).Code != codec.TopicNameInvalid) {
				t.Fatalf("deep will topic: got %v, want CONNACK 0x90", pkts)
			}
			if !v5 && len(pkts) != 0 {
				t.Fatalf("deep will topic (MQTT 3): got %v, want a close", pkts)
			}
		})
	}
	a := s.adm
	if p, st, sm, id := a.pubTopicRefused.Get(), a.subTopicRefused.Get(), a.subMaxRefused.Get(), a.clientIDRefused.Get(); p != 6 || st != 6 || sm != 2 || id != 2 {
		t.Errorf("refusals counted: publish topic %d, subscribe topic %d, max subscriptions %d, client id %d; want 6, 6, 2, 2", p, st, sm, id)
	}
}

// A panic while handling one client's packet closes that connection with
// 0x80 and is counted; the broker and its other clients go on.
func TestPanicClosesOnlyThatConnection(t *testing.T) {
	f := func(c *client, h codec.FixedHeader) {
		if c.id == "boom" && h.Type == codec.PUBLISH {
			panic("test panic")
		}
	}
	testBeforePacket.Store(&f)
	t.Cleanup(func() { testBeforePacket.Store(nil) })
	s := startBroker(t, nil)
	other := dialRaw(t, s, codec.V311)
	other.connect("other", nil)
	boom := dialRaw(t, s, codec.V5)
	boom.connect("boom", nil)
	boom.send(&codec.Publish{Topic: []byte("x"), Payload: []byte("y")})
	pkts := boom.expectClosed()
	if len(pkts) != 1 || pkts[0].(*codec.Disconnect).Code != codec.UnspecifiedError {
		t.Fatalf("got %v, want DISCONNECT 0x80 then a close", pkts)
	}
	if n := s.stats.panics.Get(); n != 1 {
		t.Fatalf("gannet_panics_total %d, want 1", n)
	}
	other.ping()
	again := dialRaw(t, s, codec.V5)
	if ca := again.connect("again", nil); ca.Code != codec.Success {
		t.Fatalf("after the panic: CONNACK %v", ca.Code)
	}
}

// --max-keepalive holds MQTT 3 clients too: one with keepalive 0 (never
// told, MQTT 3 has no way) is closed after 1.5 times the bound of silence.
func TestMaxKeepAliveMQTT3(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxKeepAlive = time.Second })
	rc := dialRaw(t, s, codec.V311)
	rc.connect("silent", func(p *codec.Connect) { p.KeepAlive = 0 })
	start := time.Now()
	rc.expectClosed()
	if d := time.Since(start); d < time.Second {
		t.Fatalf("closed after %s, before the keepalive bound", d)
	}
	if n := s.stats.keepaliveTimeouts.Get(); n != 1 {
		t.Fatalf("keepalive timeouts %d, want 1", n)
	}
}

// Past the memory high-water mark new connections and new persistent
// sessions are refused with quota exceeded and counted; the clients
// connected keep their service; below it again, service resumes by itself.
func TestMemoryLimit(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MemoryLimit = 64 << 20 })
	held := dialRaw(t, s, codec.V5)
	held.connect("held", nil)
	s.mem.limit.Store(1 << 20) // far below what any Go process holds
	waitFor(t, "the high-water mark", s.mem.high.Load)
	expectRefused(t, s, nil, codec.V5, codec.QuotaExceeded)
	if n := s.adm.refused[refusedMem].Get(); n != 1 {
		t.Fatalf("refusals for memory_limit %d, want 1", n)
	}
	if got, want := s.outboundHighWater(), s.cfg.OutboundHighWater/16; got != want {
		t.Fatalf("outbound high water %d under memory pressure, want %d", got, want)
	}
	held.ping()
	s.mem.limit.Store(1 << 40)
	waitFor(t, "service to resume", func() bool { return !s.mem.high.Load() })
	if ca := dialRaw(t, s, codec.V5).connect("after", nil); ca.Code != codec.Success {
		t.Fatalf("after the pressure: CONNACK %v", ca.Code)
	}
}

// Accepted connections carry TCP keepalive as --tcp-keepalive says.
func TestTCPKeepAlive(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.TCPKeepAlive = 90 * time.Second })
	rc := dialRaw(t, s, codec.V5)
	rc.connect("ka", nil)
	type opts struct{ on, idle, intvl int }
	got := make(chan opts, 1)
	for _, l := range s.loopList() {
		_ = l.el.Execute(context.Background(), runFunc(func() {
			for _, c := range l.conns {
				if c.id == "ka" {
					fd := c.gc.Fd()
					on, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
					idle, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
					intvl, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
					got <- opts{on, idle, intvl}
				}
			}
		}))
	}
	if o := <-got; o != (opts{1, 90, 18}) {
		t.Fatalf("keepalive %+v, want on, idle 90 s, interval 18 s", o)
	}
}

// Connections that reach their deadline together are ended a bounded
// number per pass of the sweep, the rest by the passes of the next ticks,
// and every one of them is ended. (The ticks sweep
// a part of each loop's connections at a time; a part of more than
// sweepCloses due connections, or a whole sweep as here, is bounded the
// same way.)
func TestSweepEndsABoundedNumberAPass(t *testing.T) {
	var mu sync.Mutex
	most, passes := 0, 0
	f := func(ended, _ int) {
		mu.Lock()
		most, passes = max(most, ended), passes+1
		mu.Unlock()
	}
	testSweepPass.Store(&f)
	t.Cleanup(func() { testSweepPass.Store(nil) })
	s := startBroker(t, func(c *Config) { c.ConnectTimeout = time.Hour })
	const n = 400
	conns := make([]net.Conn, n)
	for i := range conns {
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		conns[i] = nc
	}
	waitFor(t, "every connection open", func() bool { return s.stats.connections.Load() == n })
	// Every one of them is past its deadline at once.
	cfg := *s.limits()
	cfg.ConnectTimeout = time.Nanosecond
	if _, err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for _, l := range s.loopList() {
		if err := l.el.Execute(context.Background(), runFunc(func() { l.sweep(s.now()) })); err != nil {
			t.Fatal(err)
		}
	}
	for i, nc := range conns {
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		// Reset, not closed with a FIN: nothing was said on it, and a
		// reset spares both ends the teardown.
		if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection %d: %v, want a reset (closed for its connect timeout)", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most != sweepCloses {
		t.Fatalf("a pass of the sweep ended up to %d connections, want at most and at some point %d (%d passes)", most, sweepCloses, passes)
	}
}

// A pass of the sweep that reaches sweepCloses leaves the rest to the next
// tick, so that the loop reads its clients between passes: queued as a
// task of its own, the rest ran at once (gnet runs the tasks that tasks
// queue before it polls again), and a wave of connections reaching their
// connect timeout together held the loop, and a client's PINGREQ, until
// the last of them was closed.
func TestSweepReadsClientsBetweenPasses(t *testing.T) {
	const n = 5000 // a tick's part of them is 201
	var ended atomic.Int64
	first := make(chan struct{})
	var once sync.Once
	f := func(e, size int) {
		ended.Add(int64(e))
		if size > n/2 { // the sweep of the whole list below, not a tick's part
			once.Do(func() { close(first) })
		}
	}
	testSweepPass.Store(&f)
	t.Cleanup(func() { testSweepPass.Store(nil) })
	s := startBroker(t, func(c *Config) { c.ConnectTimeout = time.Hour; c.EventLoops = 1 })
	rc := dialRaw(t, s, codec.V311)
	rc.connect("steady", func(p *codec.Connect) { p.KeepAlive = 60 })
	for i := range n {
		nc, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		t.Cleanup(func() { _ = nc.Close() })
	}
	waitFor(t, "every connection open", func() bool { return s.stats.connections.Load() == n+1 })
	// Every silent one is past its deadline at once, and a sweep of the
	// whole list ends its first sweepCloses (the ticks sweep their parts
	// meanwhile).
	cfg := *s.limits()
	cfg.ConnectTimeout = time.Nanosecond
	if _, err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	l := s.loopList()[0]
	if err := l.el.Execute(context.Background(), runFunc(func() { l.sweep(s.now()) })); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("the sweep did not run")
	}
	rc.write(pingreqRaw)
	if _, ok := rc.expect().(*codec.Pingresp); !ok {
		t.Fatal("no PINGRESP")
	}
	// Answered between passes: the next pass waits for a tick, and
	// ends at most sweepCloses. (Passes queued one after another ended a
	// tick's part, 200, or more before the loop read the PINGREQ; here
	// it is answered after the first pass, or the second or third when
	// the ticks come between; five would mean 40 ms of ticks.)
	if e := ended.Load(); e > 5*sweepCloses {
		t.Fatalf("the PINGREQ sent after the first pass was answered after %d of %d connections were ended", e, n)
	}
	waitFor(t, "every silent connection ended", func() bool { return s.stats.connections.Load() == 1 })
}

// The connect timeout is spread over a quarter more than configured, by
// descriptor, evenly enough that connections opened together do not all
// reach it together.
func TestConnectDeadlineIsSpread(t *testing.T) {
	const timeout = 10 * time.Second
	var bins [5]int
	for fd := range 10000 {
		d := connectDeadline(timeout, fd)
		if d < int64(timeout) || d > int64(timeout)*5/4 {
			t.Fatalf("descriptor %d: deadline %v, want between %v and %v", fd, time.Duration(d), timeout, timeout*5/4)
		}
		bins[min(int((d-int64(timeout))*5/(int64(timeout)/4)), 4)]++
	}
	for i, n := range bins {
		if n < 1500 || n > 2500 {
			t.Fatalf("deadlines per fifth of the spread %v: fifth %d holds %d of 10,000", bins, i, n)
		}
	}
}

// makeRoom drops the finished entries first, and others only as far as
// the bound needs.
func TestMakeRoom(t *testing.T) {
	m := map[string]int{}
	for i := range 10 {
		m[fmt.Sprint("c", i)] = i
	}
	makeRoom(m, 8, func(v int) bool { return v < 3 }) // 7 left: enough
	if len(m) != 7 {
		t.Fatalf("%d left, want 7", len(m))
	}
	for i := range 3 {
		if _, ok := m[fmt.Sprint("c", i)]; ok {
			t.Fatalf("finished entry c%d kept", i)
		}
	}
	makeRoom(m, 4, func(int) bool { return false }) // none finished: 3 left
	if len(m) != 3 {
		t.Fatalf("%d left, want 3", len(m))
	}
}
