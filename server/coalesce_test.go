package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// A subscriber fed by several publishers, each message its own unit of
// work, gets them in a few writes, in order per publisher, and none is
// lost.
func TestWriteDelayCoalesces(t *testing.T) {
	t.Parallel()
	const delay = 200 * time.Millisecond
	s := startBroker(t, func(c *Config) { c.WriteDelay = delay })
	sub := quietSubscriber(t, s, codec.V311, "co-sub", "co/#", delay)
	const pubs, each = 3, 50
	var ps [pubs]*rawConn
	for i := range ps {
		ps[i] = dialRaw(t, s, codec.V311)
		ps[i].connect(fmt.Sprintf("co-pub%d", i), nil)
	}
	before := s.stats.writes.Get()
	for n := range each {
		for i, p := range ps {
			p.send(&codec.Publish{Topic: fmt.Appendf(nil, "co/%d", i), Payload: fmt.Appendf(nil, "%d", n)})
			// The PINGRESP says the broker has routed the message: each
			// message is its own unit of work and, unless held, its own
			// write.
			if got := p.ping(); len(got) != 0 {
				t.Fatalf("publisher got %v", got)
			}
		}
	}
	next := [pubs]int{}
	for range pubs * each {
		p, ok := sub.expect().(*codec.Publish)
		if !ok {
			t.Fatal("expected PUBLISH")
		}
		var i, n int
		if _, err := fmt.Sscanf(string(p.Topic), "co/%d", &i); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Sscanf(string(p.Payload), "%d", &n); err != nil || n != next[i] {
			t.Fatalf("publisher %d: got message %q, want %d", i, p.Payload, next[i])
		}
		next[i]++
	}
	// Each PINGRESP is a write of its own (the publisher waits for it);
	// the subscriber's 150 messages take one write per delay elapsed, a
	// handful here, where each would be a write without the delay.
	writes := s.stats.writes.Get() - before
	if max := uint64(pubs*each + pubs*each/3); writes > max {
		t.Errorf("%d writes for %d messages and %d PINGRESPs, want at most %d", writes, pubs*each, pubs*each, max)
	}
}

// Clients waiting for an answer are not held by the write delay: a
// synchronous QoS 1 publisher, a request/response exchange between two
// clients, and a consumer whose receive maximum is 1. Each exchange below
// waits for the one before; held for the delay, the 90 of them would take
// at least 90 seconds.
func TestWriteDelayAnswersAtOnce(t *testing.T) {
	t.Parallel()
	s := startBroker(t, func(c *Config) { c.WriteDelay = time.Second })
	start := time.Now()
	a := dialRaw(t, s, codec.V5)
	a.connect("rr-a", nil)
	opsSubscribe(t, a, 0, "rr/a")
	b := dialRaw(t, s, codec.V5)
	b.connect("rr-b", nil)
	opsSubscribe(t, b, 0, "rr/b")
	for n := range 30 {
		id := a.nextID()
		a.send(&codec.Publish{Topic: []byte("rr/b"), QoS: 1, PacketID: id, Payload: fmt.Appendf(nil, "req%d", n)})
		if ack, ok := a.expect().(*codec.Ack); !ok || ack.Kind != codec.PUBACK || ack.PacketID != id {
			t.Fatalf("round %d: expected PUBACK %d, got %+v", n, id, ack)
		}
		req, ok := b.expect().(*codec.Publish)
		if !ok || string(req.Payload) != fmt.Sprintf("req%d", n) {
			t.Fatalf("round %d: responder got %+v", n, req)
		}
		b.send(&codec.Publish{Topic: []byte("rr/a"), Payload: fmt.Appendf(nil, "resp%d", n)})
		resp, ok := a.expect().(*codec.Publish)
		if !ok || string(resp.Payload) != fmt.Sprintf("resp%d", n) {
			t.Fatalf("round %d: requester got %+v", n, resp)
		}
	}

	// A consumer with one message in flight at a time: each PUBACK frees
	// the window for the next queued message.
	c := dialRaw(t, s, codec.V5)
	c.connect("rr-c", func(p *codec.Connect) {
		p.Props.ReceiveMaximum = 1
		p.Props.Set(codec.PropReceiveMaximum)
	})
	opsSubscribe(t, c, 1, "rr/c")
	for n := range 30 {
		a.send(&codec.Publish{Topic: []byte("rr/c"), QoS: 1, PacketID: a.nextID(), Payload: fmt.Appendf(nil, "%d", n)})
	}
	acks := 0
	for n := 0; n < 30; {
		switch p := c.expect().(type) {
		case *codec.Publish:
			if string(p.Payload) != fmt.Sprint(n) {
				t.Fatalf("consumer got %q, want %d", p.Payload, n)
			}
			c.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
			n++
		default:
			t.Fatalf("consumer got %+v", p)
		}
	}
	for acks < 30 {
		if ack, ok := a.expect().(*codec.Ack); !ok || ack.Kind != codec.PUBACK {
			t.Fatalf("expected PUBACK, got %+v", ack)
		}
		acks++
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("90 exchanges took %s: answers were held for the write delay", d)
	}
}

// Bytes held for the write delay, on the subscriber's loop or on their way
// to it, go out before the DISCONNECT of a shutdown.
func TestWriteDelayShutdownFlushes(t *testing.T) {
	t.Parallel()
	const delay = 500 * time.Millisecond
	s := startBroker(t, func(c *Config) { c.WriteDelay, c.WriteDelayBusy = delay, 0 })
	sub := quietSubscriber(t, s, codec.V5, "sd-sub", "sd/#", delay)
	// The first message is written at once, the next ones are held.
	pubs := make([]*rawConn, 4) // on both loops
	for i := range pubs {
		pubs[i] = dialRaw(t, s, codec.V311)
		pubs[i].connect(fmt.Sprintf("sd-pub%d", i), nil)
		pubs[i].send(&codec.Publish{Topic: []byte("sd/x"), Payload: fmt.Appendf(nil, "%d", i)})
		pubs[i].ping() // routed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := sub.expectClosed()
	seen := map[string]bool{}
	for _, p := range got[:len(got)-1] {
		if m, ok := p.(*codec.Publish); ok {
			seen[string(m.Payload)] = true
		}
	}
	if len(seen) != len(pubs) {
		t.Errorf("got %d of %d held messages before the connection closed: %+v", len(seen), len(pubs), got)
	}
	if d, ok := got[len(got)-1].(*codec.Disconnect); !ok || d.Code != codec.ServerShuttingDown {
		t.Errorf("last packet %+v, want DISCONNECT 0x8B", got[len(got)-1])
	}
}

// A client whose deliveries are being held and that then asks for
// something gets the answer, and what was held, at once.
func TestWriteDelayHeldClientAsks(t *testing.T) {
	t.Parallel()
	const delay = time.Second
	// One event loop, so that the feeder's PINGRESP says the message is
	// already held for x, not still on its way from another loop.
	s := startBroker(t, func(c *Config) { c.WriteDelay, c.EventLoops, c.WriteDelayBusy = delay, 1, 0 })
	x := quietSubscriber(t, s, codec.V311, "ha-x", "ha/#", delay)
	feed := dialRaw(t, s, codec.V311)
	feed.connect("ha-feed", nil)
	for n := range 2 {
		feed.send(&codec.Publish{Topic: []byte("ha/t"), Payload: fmt.Appendf(nil, "%d", n)})
		feed.ping() // routed
	}
	// The first message went at once; the second waits for the delay.
	if p, ok := x.expect().(*codec.Publish); !ok || string(p.Payload) != "0" {
		t.Fatalf("got %+v, want the first message", p)
	}
	start := time.Now()
	got := x.ping()
	if took := time.Since(start); took > delay*3/4 {
		t.Errorf("PINGRESP took %s: held for the write delay", took)
	}
	if len(got) != 1 || string(got[0].(*codec.Publish).Payload) != "1" {
		t.Errorf("got %+v before the PINGRESP, want the held message", got)
	}
}

// A loop asked for few writes holds nothing: a quiet subscriber's second
// message, routed right after its first, is written at once, where a
// busy loop would hold it for the delay (TestWriteDelayHeldClientAsks).
func TestWriteDelayOnlyWhileBusy(t *testing.T) {
	t.Parallel()
	const delay = time.Second
	s := startBroker(t, func(c *Config) { c.WriteDelay, c.EventLoops = delay, 1 })
	x := quietSubscriber(t, s, codec.V311, "ob-x", "ob/#", delay)
	feed := dialRaw(t, s, codec.V311)
	feed.connect("ob-feed", nil)
	for n := range 2 {
		feed.send(&codec.Publish{Topic: []byte("ob/t"), Payload: fmt.Appendf(nil, "%d", n)})
		feed.ping() // routed: one loop, so x's bytes are pushed
	}
	l := s.loopList()[0]
	held := make(chan int, 1)
	if err := l.el.Execute(context.Background(), runFunc(func() { held <- len(l.later) })); err != nil {
		t.Fatal(err)
	}
	if n := <-held; n != 0 {
		t.Fatalf("%d clients held on a loop asked for %d writes or fewer", n, s.cfg.WriteDelayBusy)
	}
	for n := range 2 {
		if p, ok := x.expect().(*codec.Publish); !ok || string(p.Payload) != fmt.Sprint(n) {
			t.Fatalf("got %+v, want message %d", p, n)
		}
	}
}

// quietSubscriber connects a client subscribed to filter at QoS 0 and waits
// out the write delay: its SUBSCRIBE no longer counts as waiting for an
// answer, and from then on it only reads, so what comes for it is held.
func quietSubscriber(t *testing.T, s *Server, v codec.Version, id, filter string, delay time.Duration) *rawConn {
	t.Helper()
	rc := dialRaw(t, s, v)
	rc.connect(id, nil)
	opsSubscribe(t, rc, 0, filter)
	time.Sleep(delay) // the rule is a time: nothing else to wait on
	return rc
}

// A message another loop delivered while the subscriber's window had room
// waits in the loop's inbox when the subscriber is held by the delay; a
// queued message that the subscriber's acknowledgement lets out on its
// own loop must not pass it.
func TestWriteDelayKeepsOrderWhenTheWindowOpens(t *testing.T) {
	t.Parallel()
	const delay = time.Second
	s := startBroker(t, func(c *Config) { c.WriteDelay, c.WriteDelayBusy = delay, 0 })
	sub, pub := windowedPair(t, s, "wo", 3)
	time.Sleep(delay) // quiet: the rule is a time, nothing else to wait on

	// m1 is written at once, m2 is held for the delay, m3 waits in the
	// inbox, m4 is queued (the window of 3 is full).
	for i := 1; i <= 4; i++ {
		pub.publishAcked("wo/t", fmt.Sprintf("m%d", i), 1, false)
	}
	p, ok := sub.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "m1" {
		t.Fatalf("got %+v, want m1", p)
	}
	sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	for i := 2; i <= 4; i++ {
		p, ok := sub.expect().(*codec.Publish)
		if !ok || string(p.Payload) != fmt.Sprintf("m%d", i) {
			t.Fatalf("got %+v, want m%d", p, i)
		}
	}
}

// ackTaken sends sub's PUBACK of pid and waits until ss has taken it
// (what names the message). It returns an error rather than failing the
// test: it runs in hooks on an event loop.
func ackTaken(sub *rawConn, ss *session, pid uint16, what string) error {
	sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: pid})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		ss.mu.Lock()
		_, held := ss.mu.inflight[pid]
		ss.mu.Unlock()
		if !held {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the PUBACK of %s not taken within 5s", what)
		}
	}
}

// windowedPair connects an MQTT 5 subscriber name-sub to name/# at QoS 1
// with a receive maximum of window, and a publisher on another event loop
// (publisherElsewhere).
func windowedPair(t *testing.T, s *Server, name string, window uint16) (sub, pub *rawConn) {
	t.Helper()
	sub = dialRaw(t, s, codec.V5)
	sub.connect(name+"-sub", func(p *codec.Connect) {
		p.Props.ReceiveMaximum = window
		p.Props.Set(codec.PropReceiveMaximum)
	})
	opsSubscribe(t, sub, 1, name+"/#")
	return sub, publisherElsewhere(t, s, name+"-sub", name+"-pub")
}

// publisherElsewhere connects MQTT 5 clients named prefix0, prefix1, ...
// until one is on another event loop than the client sub, and returns it.
func publisherElsewhere(t *testing.T, s *Server, sub, prefix string) *rawConn {
	t.Helper()
	loopOf := func(id string) *loop {
		ss := s.lookupSession(id)
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.mu.cl.loop
	}
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		rc := dialRaw(t, s, codec.V5)
		rc.connect(id, nil)
		if loopOf(id) != loopOf(sub) {
			return rc
		}
	}
}

// A delivery another loop made in a subscriber's inflight window, still on
// its way when the subscriber's acknowledgement lets out the session's
// queue, is written before what the queue lets out: a publisher's
// messages arrive in order. (The publisher's loop posts its deliveries at
// the end of its read; the subscriber's loop let out the queued message at
// once.)
func TestWindowDeliveryInTransitKeepsOrder(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.WriteDelay = 0 })
	sub, pub := windowedPair(t, s, "tr", 2)
	pub.publishAcked("tr/t", "m0", 1, false)
	p0, ok := sub.expect().(*codec.Publish)
	if !ok || string(p0.Payload) != "m0" {
		t.Fatalf("got %+v, want m0", p0)
	}
	// The publisher sends m1, m2 and m3 in one write: m1 takes the
	// window's last slot, m2 and m3 are queued. Before its loop handles
	// m3 (m1 still in its outbox), the subscriber acknowledges m0 and the
	// hook waits until the subscriber's loop has taken that
	// acknowledgement.
	ss := s.lookupSession("tr-sub")
	hookErr := make(chan error, 1)
	publishes := 0
	f := func(c *client, h codec.FixedHeader) {
		if h.Type != codec.PUBLISH || !strings.HasPrefix(c.id, "tr-pub") {
			return
		}
		if publishes++; publishes != 3 { // m3
			return
		}
		hookErr <- ackTaken(sub, ss, p0.PacketID, "m0")
	}
	testBeforePacket.Store(&f)
	t.Cleanup(func() { testBeforePacket.Store(nil) })
	var burst []byte
	for i := 1; i <= 3; i++ {
		burst = (&codec.Publish{QoS: 1, PacketID: uint16(100 + i), Topic: []byte("tr/t"), Payload: fmt.Appendf(nil, "m%d", i)}).Append(burst, codec.V5)
	}
	pub.write(burst)
	for i := 1; i <= 3; i++ {
		p, ok := sub.expect().(*codec.Publish)
		if !ok || string(p.Payload) != fmt.Sprintf("m%d", i) {
			t.Fatalf("got %+v, want m%d", p, i)
		}
		sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	select {
	case err := <-hookErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the publisher's loop never handled m3")
	}
}

// Two goroutines that deliver to one subscriber off its loop (two peers'
// lanes) give packet ids in one order and may post their bytes in the
// other: the later delivery waits in the session's queue until the earlier
// one has arrived, so the subscriber gets them in packet-id order.
func TestDeliveriesOfTwoGoroutinesKeepOrder(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.WriteDelay = 0 })
	sub := dialRaw(t, s, codec.V5)
	sub.connect("two-sub", nil)
	opsSubscribe(t, sub, 1, "two/#")
	first, second := newOutbox(s, nil), newOutbox(s, nil)
	for i, ob := range []*outbox{first, second} {
		m := newMessage(&codec.Publish{Topic: []byte("two/t"), QoS: 1, Payload: fmt.Appendf(nil, "m%d", i+1)}, "pub", s.now())
		if n, ok := s.route(ob, m); n != 1 || !ok {
			t.Fatalf("m%d routed to %d (ok %v), want 1", i+1, n, ok)
		}
	}
	second.flush()
	first.flush()
	var ids []uint16
	for i := 1; i <= 2; i++ {
		pkt := sub.expect()
		p, ok := pkt.(*codec.Publish)
		if !ok {
			t.Fatalf("delivery %d: got %T, want a PUBLISH", i, pkt)
		}
		if string(p.Payload) != fmt.Sprintf("m%d", i) {
			t.Fatalf("delivery %d: got %s, want m%d", i, p.Payload, i)
		}
		ids = append(ids, p.PacketID)
	}
	if ids[0] == ids[1] {
		t.Fatalf("both deliveries have packet id %d", ids[0])
	}
}

// Acknowledgements queued for a client while another loop's bytes for it
// wait in the loop's inbox go out after those bytes, each as queued: the
// inbox is taken first without writing the client in the middle of the
// unit of work, whose acknowledgements are encoded into the client's
// arena (a write there resets it, and the next acknowledgement overwrote
// the one queued before: PUBREL 2 twice, no PUBREL 1).
func TestAcksQueuedBehindTheInboxKeepTheirBytes(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	rc.connect("acks", nil)
	ping := (&codec.Pingresp{}).Append(nil, codec.V5)
	done := make(chan bool, 1)
	for _, l := range s.loopList() {
		err := l.el.Execute(context.Background(), runFunc(func() {
			for _, c := range l.conns {
				if c.id != "acks" {
					continue
				}
				// Another loop's delivery for c waits in the inbox.
				x := xferPool.Get().(*xfer)
				x.items = append(x.items, xitem{cl: c, n: 1})
				x.parts = append(x.parts, ping)
				l.in.mu.Lock()
				l.in.x = x
				l.in.held.Store(true)
				l.in.mu.Unlock()
				c.queueAck(l.ob, -1, codec.PUBREL, 1, codec.Success)
				c.queueAck(l.ob, -1, codec.PUBREL, 2, codec.Success)
				l.ob.flush()
				done <- true
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if _, ok := rc.expect().(*codec.Pingresp); !ok {
		t.Fatal("the inbox's bytes did not come first")
	}
	for want := uint16(1); want <= 2; want++ {
		if a, ok := rc.expect().(*codec.Ack); !ok || a.Kind != codec.PUBREL || a.PacketID != want {
			t.Fatalf("got %+v, want PUBREL %d", a, want)
		}
	}
}
