package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
)

// connectPersistent connects a v5 client with a session kept for an hour.
func connectPersistent(t *testing.T, s *Server, id string, clean bool) (*rawConn, *codec.Connack) {
	t.Helper()
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect(id, func(p *codec.Connect) {
		p.CleanStart = clean
		p.Props.SessionExpiry = 3600
		p.Props.Set(codec.PropSessionExpiry)
	})
	return rc, ca
}

// offlineWithMessage leaves a persistent session "x" on s, offline,
// subscribed to old/# and holding one queued QoS 1 message, and returns
// it.
func offlineWithMessage(t *testing.T, s *Server, peer *Server) *session {
	t.Helper()
	x, _ := connectPersistent(t, s, "x", true)
	x.subscribe("old/#", 1)
	x.send(&codec.Disconnect{})
	x.expectClosed()
	waitRoutes(t, peer, 1)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub-"+s.cfg.Cluster.NodeName, nil)
	pub.publishAcked("old/1", "queued", 1, false)
	s.sessions.Lock()
	sess := s.sessions.m["x"]
	s.sessions.Unlock()
	waitFor(t, "the message queued for x", func() bool {
		sess.mu.Lock()
		defer sess.mu.Unlock()
		return sess.mu.queue.len() == 1
	})
	return sess
}

// A peer's answer to a takeover that comes after the CONNECT stopped
// waiting is merged into the session the client now has: the client stays
// connected, keeps its new subscriptions and gets the old session's queued
// message and subscriptions.
func TestClusterLateTakeoverAnswerIsMerged(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	nodes[1].cl.takeoverWait.Store(int64(200 * time.Millisecond))
	old := offlineWithMessage(t, nodes[0], nodes[1])

	old.mu.Lock() // n1 answers the takeover only once this is let go
	x, ca := connectPersistent(t, nodes[1], "x", false)
	if ca.SessionPresent {
		old.mu.Unlock()
		t.Fatal("session present although n1 could not answer in time")
	}
	x.subscribe("new/#", 1)
	old.mu.Unlock()

	p, ok := x.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "queued" {
		t.Fatalf("the client got %v, want the old session's queued message", p)
	}
	x.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	// The old subscription joined the new one. (Deliveries on old/# are
	// not checked here: for a grace period n1 still sends on what matches
	// the session it handed over.)
	nodes[1].sessions.Lock()
	cur := nodes[1].sessions.m["x"]
	nodes[1].sessions.Unlock()
	cur.mu.Lock()
	_, hasOld := cur.mu.subs["old/#"]
	_, hasNew := cur.mu.subs["new/#"]
	cur.mu.Unlock()
	if !hasOld || !hasNew {
		t.Fatalf("subscriptions after the merge: old/# %v, new/# %v; want both", hasOld, hasNew)
	}
	pub := dialRaw(t, nodes[1], codec.V5)
	pub.connect("pub2", nil)
	pub.publishAcked("new/1", "new filter", 1, false)
	if p, ok := x.expect().(*codec.Publish); !ok || string(p.Payload) != "new filter" {
		t.Fatalf("got %v, want the message on new/1", p)
	}
	x.ping() // still connected
}

// A takeover answer that cannot be queued for the asking peer (its queue
// is full) leaves the session where it was, queued message and all,
// instead of ending it with nowhere to go.
func TestClusterTakeoverAnswerNotSentKeepsSession(t *testing.T) {
	nodes := startCluster(t, 2, func(i int, c *Config) {
		if i == 0 {
			c.Cluster.QueueLimit = 1 // one unacknowledged record per lane
		}
	})
	n1, n2 := nodes[0], nodes[1]
	n1.cl.takeoverWait.Store(int64(200 * time.Millisecond))
	n2.cl.takeoverWait.Store(int64(200 * time.Millisecond))
	x := offlineWithMessage(t, n1, n2)

	// y lives on n2; n2 answers a takeover of y only once the test lets
	// go of y's session, so n1's request for it stays unacknowledged and
	// fills n1's control lane to n2.
	y, _ := connectPersistent(t, n2, "y", true)
	n2.sessions.Lock()
	ySess := n2.sessions.m["y"]
	n2.sessions.Unlock()
	ySess.mu.Lock()
	released := false
	release := func() {
		if !released {
			released = true
			ySess.mu.Unlock()
		}
	}
	defer release()
	queued := func() int {
		for _, m := range n1.cl.node.Members() {
			if m.Name == "n2" {
				return m.Queued
			}
		}
		return -1
	}
	waitFor(t, "n1's records to n2 acknowledged", func() bool { return queued() == 0 })
	connectPersistent(t, n1, "y", false) // n1 asks n2, and waits 200ms
	if q := queued(); q != 1 {
		t.Fatalf("%d records from n1 wait for n2, want the takeover request for y", q)
	}
	_ = y

	// x now connects to n2, whose request n1 cannot answer.
	xc, ca := connectPersistent(t, n2, "x", false)
	if ca.SessionPresent {
		t.Fatal("session present although n1 could not answer")
	}
	release()
	xc.ping()

	// The session stays on n1 as it was, message and all; or, once n2's
	// word that x connected there reaches n1 and the lane has room, it
	// goes to n2 as a stale copy (connectedElsewhere), and x gets the
	// message there. Ended without its answer sent, it would be lost.
	n1.sessions.Lock()
	kept := n1.sessions.m["x"]
	n1.sessions.Unlock()
	if kept == x {
		kept.mu.Lock()
		ended, n := kept.mu.ended, kept.mu.queue.len()
		kept.mu.Unlock()
		if !ended {
			if n != 1 {
				t.Fatalf("x's session on n1 holds %d messages, want its one", n)
			}
			return
		}
	}
	if p, ok := xc.expect().(*codec.Publish); !ok || string(p.Payload) != "queued" {
		t.Fatalf("n1 ended x's session and x got %+v on n2, want the message it held", p)
	}
}

// Telling a peer that came up which clients are connected here does not
// hold up CONNECTs: a session that is busy (its lock held) delays only
// that telling.
func TestPeerUpDoesNotStallConnects(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1 := nodes[0]
	connectPersistent(t, n1, "busy", true)
	n1.sessions.Lock()
	busy := n1.sessions.m["busy"]
	n1.sessions.Unlock()

	busy.mu.Lock()
	done := make(chan struct{})
	go func() {
		n1.cl.PeerUp("n2")
		close(done)
	}()
	// A new client connects while PeerUp waits for the busy session.
	rc := dialRaw(t, n1, codec.V5)
	rc.send(&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, CleanStart: true, KeepAlive: 30,
		ClientID: []byte("newcomer")})
	p, err := rc.read()
	busy.mu.Unlock()
	<-done
	if err != nil {
		t.Fatalf("no CONNACK while PeerUp ran: %v", err)
	}
	if ca, ok := p.(*codec.Connack); !ok || ca.Code != codec.Success {
		t.Fatalf("got %v, want CONNACK success", p)
	}
}

// A delivery the old node sends on before the session is installed on
// the new one (its CONNECT still waits for another peer's answer) is
// kept and delivered once the session is in, not dropped.
func TestClusterDeliverySentOnBeforeTheSessionArrives(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	p := &stalledPeer{block: make(chan struct{}), want: -1, all: make(chan struct{})}
	startStalledPeer(t, b, p) // never answers the takeover: b waits takeoverTimeout
	sub, _ := persistentV5(t, a, "s")
	sub.subscribe("t", 1)
	waitRoutes(t, b, 2)
	sub.send(&codec.Disconnect{})
	sub.expectClosed()

	again := dialRaw(t, b, codec.V5)
	conn := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, KeepAlive: 30, ClientID: []byte("s")}
	conn.Props.SessionExpiry = 3600
	conn.Props.Set(codec.PropSessionExpiry)
	again.send(conn)
	waitFor(t, "a to hand the session over", func() bool { return a.lookupSession("s") == nil })
	pub := dialRaw(t, a, codec.V5)
	pub.connect("p", nil)
	pub.publishAcked("t", "early", 1, false)

	ca, ok := again.expect().(*codec.Connack)
	if !ok || !ca.SessionPresent {
		t.Fatalf("expected CONNACK with the session present, got %+v", ca)
	}
	if m, ok := again.expect().(*codec.Publish); !ok || string(m.Payload) != "early" {
		t.Fatalf("expected the message sent on early, got %+v", m)
	}
}

// A QoS 1/2 PUBLISH read from a connection after its session went to
// another one (the kick still on its way, as when a paused node resumes
// with the input buffered) is not taken: the client sends it again on its
// new connection, and taken twice it would be delivered twice.
func TestPublishAfterTakeoverIsNotTaken(t *testing.T) {
	s := startBroker(t, nil)
	sub := dialRaw(t, s, codec.V5)
	sub.connect("sub", nil)
	opsSubscribe(t, sub, 2, "tk/#")
	old, _ := connectPersistent(t, s, "pub", false)
	c := func() *client {
		ss := s.lookupSession("pub")
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.mu.cl
	}()
	frame := (&codec.Publish{Topic: []byte("tk/x"), QoS: 2, PacketID: 7, Payload: []byte("stale")}).Append(nil, codec.V5)
	h, n, err := codec.DecodeFixedHeader(frame)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	// On the connection's loop: the session leaves (as to a peer), then
	// the PUBLISH the connection sent before is read.
	_ = c.loop.el.Execute(context.Background(), runFunc(func() {
		ob := c.loop.ob
		s.handOverTo(ob, c.sess, "elsewhere", nil)
		got <- c.handle(ob, h, frame[n:])
		ob.flush()
	}))
	if err := <-got; !errors.Is(err, errClose) {
		t.Fatalf("PUBLISH after the takeover: %v, want the connection closed", err)
	}
	old.expectClosed()
	if extra := sub.ping(); len(extra) != 0 {
		t.Fatalf("the subscriber got %d packets from the superseded connection: %v", len(extra), extra)
	}
}

// A delivery sent on to a node that the session has left again (it moved
// n1 → n2 → n1, and n1's first copy sent on to n2 what still reached it)
// follows the session to where it went, instead of being dropped for the
// want of a session on n2.
func TestClusterDeliverySentOnFollowsASessionThatMovedOn(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	sub, _ := persistentV5(t, n1, "s")
	sub.subscribe("t/#", 1)
	waitRoutes(t, n2, 1)
	sub.send(&codec.Disconnect{})
	sub.expectClosed()
	for _, s := range []*Server{n2, n1} {
		c, ca := connectPersistent(t, s, "s", false)
		if !ca.SessionPresent {
			t.Fatalf("the session did not move to %s", s.cfg.Cluster.NodeName)
		}
		if s == n2 {
			c.send(&codec.Disconnect{})
			c.expectClosed()
		} else {
			sub = c
		}
	}
	if n2.lookupSession("s") != nil {
		t.Fatal("n2 still holds the session")
	}
	// What n1's first copy of the session sent on reaches n2 now.
	m := newMessage(&codec.Publish{Topic: []byte("t/x"), QoS: 1, Payload: []byte("late")}, "p", n1.now())
	sentOn(t, n2, "s", m, 1)
	if p, ok := sub.expect().(*codec.Publish); !ok || string(p.Payload) != "late" {
		t.Fatalf("expected the message sent on twice, got %+v", p)
	}
}

// The keepalive counts from the CONNACK [MQTT-3.1.2-24]: a CONNECT that
// waits longer than 1.5 times its keepalive for a peer to answer the
// takeover is answered, not closed with a CONNACK code that CONNACK does
// not have (0x8D).
func TestTakeoverWaitIsNotAKeepaliveTimeout(t *testing.T) {
	s := startCluster(t, 1, nil)[0]
	p := &stalledPeer{block: make(chan struct{}), want: -1, all: make(chan struct{})}
	startStalledPeer(t, s, p) // never answers the takeover
	s.cl.takeoverWait.Store(int64(2 * time.Second))
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("k", func(c *codec.Connect) { c.KeepAlive = 1 })
	if ca.Code != codec.Success {
		t.Fatalf("CONNACK %v after waiting for the peer, want success", ca.Code)
	}
	rc.ping()
}

// A CONNECT whose connection closes while the peer holding the session
// has not answered still gets the session here when the answer comes
// late, and what the peer's copy sent on before that answer was taken
// waits for it instead of finding no session.
func TestClusterAbandonedTakeoverKeepsWhatWasSentOn(t *testing.T) {
	a, b, old, _ := abandonedTakeover(t)
	waitFor(t, "b to stop waiting", func() bool {
		b.cl.reqs.Lock()
		defer b.cl.reqs.Unlock()
		for _, r := range b.cl.reqs.m {
			if !r.abandoned {
				return false
			}
		}
		return true
	})
	// What a's copy sends on before its answer is taken.
	m := newMessage(&codec.Publish{Topic: []byte("old/2"), QoS: 1, Payload: []byte("sent on")}, "p", a.now())
	sentOn(t, b, "x", m, 1)
	old.mu.Unlock()
	waitFor(t, "the session to arrive on b", func() bool { return b.lookupSession("x") != nil })

	got := resumeAndTake(t, b, "x", 2)
	if !got["queued"] || !got["sent on"] {
		t.Fatalf("the client got %v, want the queued message and the one sent on", got)
	}
}

// A peer's answer that comes after the takeover timed out but before the
// CONNECT's loop has seen the timeout is taken as a late answer: the loop,
// finding the connection closed, does not go on waiting for that peer,
// and what is sent on afterwards reaches the session at once instead of
// waiting movedGrace for an answer that already came.
func TestClusterAnswerBetweenTimeoutAndLoopIsNotAwaited(t *testing.T) {
	a, b, old, req := abandonedTakeover(t)
	onLoop := func(f func() bool) bool {
		got := make(chan bool, 1)
		if err := req.c.loop.el.Execute(context.Background(), runFunc(func() { got <- f() })); err != nil {
			t.Fatal(err)
		}
		return <-got
	}
	waitFor(t, "b to see the connection close", func() bool { return onLoop(func() bool { return req.c.closed }) })
	// The loop is held while the takeover times out and a answers.
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	if err := req.c.loop.el.Execute(context.Background(), runFunc(func() { <-release })); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the takeover to time out", func() bool {
		b.cl.reqs.Lock()
		defer b.cl.reqs.Unlock()
		return req.abandoned || b.cl.reqs.m[req.id] != req
	})
	old.mu.Unlock()
	waitFor(t, "a's answer", func() bool { return b.lookupSession("x") != nil })
	close(release)
	onLoop(func() bool { return true }) // the timed-out CONNECT has been seen to
	if b.cl.stillWaiting(req) {
		t.Fatal("b still waits for the answer it has taken")
	}

	m := newMessage(&codec.Publish{Topic: []byte("old/2"), QoS: 1, Payload: []byte("sent on")}, "p", a.now())
	sentOn(t, b, "x", m, 1)
	got := resumeAndTake(t, b, "x", 2)
	if !got["queued"] || !got["sent on"] {
		t.Fatalf("the client got %v, want the queued message and the one sent on", got)
	}
}

// A delivery sent on to a node the session has left is not sent on again
// when the session had that message there: the node it moved to does not
// remember what it was given on the old one, and would give it again.
func TestClusterDeliverySentOnIsNotSentOnAgainWhenItWasThere(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	sub, m, p := deliveredOnce(t, n1, n2)
	sub.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
	if rel, ok := sub.expect().(*codec.Ack); !ok || rel.Kind != codec.PUBREL {
		t.Fatalf("got %+v, want PUBREL", rel)
	}
	sub.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: p.PacketID})
	sub.ping()
	sub.send(&codec.Disconnect{})
	sub.expectClosed()
	again, ca := connectPersistent(t, n2, "s", false)
	if !ca.SessionPresent {
		t.Fatal("the session did not move to n2")
	}
	// A third node's copy of the session sends m on to n1 now.
	sentOn(t, n1, "s", m, 2)
	waitFor(t, "n1 to drop it", func() bool { return n1.stats.droppedSeen.Get() == 1 })
	if extra := again.ping(); len(extra) != 0 {
		t.Fatalf("the client got %d packets again: %v", len(extra), extra)
	}
}

// When two peers hold a copy of a client's session (after a partition or
// a restart), a takeover gets both: the newer becomes the session and the
// older is merged into it, instead of being dropped with what it held.
func TestClusterTakeoverMergesEveryCopy(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	offlineWithMessage(t, a, c) // "x" on a, holding "queued"
	m := newMessage(&codec.Publish{Topic: []byte("old/2"), QoS: 1, Payload: []byte("on b")}, "p", b.now())
	ob := newOutbox(b, nil)
	b.install(ob, &movedSession{id: "x", since: b.stamp(), expiry: time.Hour,
		subs: map[string]fanout.Options{"old/#": {QoS: 1}}, msgs: []movedMsg{{msg: m, qos: 1}}})
	ob.flush()

	got := resumeAndTake(t, c, "x", 2)
	if !got["queued"] || !got["on b"] {
		t.Fatalf("the client got %v, want what both copies held", got)
	}
}

// resumeAndTake connects id to s with its session, which must be there,
// and returns the payloads of the first n QoS 1 messages it gets,
// acknowledging each.
func resumeAndTake(t *testing.T, s *Server, id string, n int) map[string]bool {
	t.Helper()
	x, ca := connectPersistent(t, s, id, false)
	if !ca.SessionPresent {
		t.Fatalf("no session present for %s on %s", id, s.cfg.Cluster.NodeName)
	}
	got := map[string]bool{}
	for range n {
		p, ok := x.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected a PUBLISH, got %+v", p)
		}
		got[string(p.Payload)] = true
		x.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	return got
}

// deliveredOnce has a persistent client "s" on s subscribe to t/# at QoS
// 2 (its route known to peer) and routes it a message m, "once", with an
// origin, which the client gets as p and has not acknowledged yet.
func deliveredOnce(t *testing.T, s, peer *Server) (*rawConn, *message, *codec.Publish) {
	t.Helper()
	sub, _ := persistentV5(t, s, "s")
	sub.subscribe("t/#", 2)
	waitRoutes(t, peer, 1)
	m := newMessage(&codec.Publish{Topic: []byte("t/x"), QoS: 2, Payload: []byte("once")}, "p", s.now())
	s.cl.origins.stamp(m)
	ob := newOutbox(s, nil)
	s.route(ob, m)
	ob.flush()
	p, ok := sub.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "once" {
		t.Fatalf("got %+v, want once", p)
	}
	return sub, m, p
}

// abandonedTakeover starts two nodes, a holding client x's session
// (offlineWithMessage), locked (a answers a takeover only once the caller
// lets old.mu go), and b taking it over for a connection that closes
// while b waits for a's answer (200 ms, then it times out).
func abandonedTakeover(t *testing.T) (a, b *Server, old *session, req *takeoverReq) {
	t.Helper()
	nodes := startCluster(t, 2, nil)
	a, b = nodes[0], nodes[1]
	b.cl.takeoverWait.Store(int64(200 * time.Millisecond))
	old = offlineWithMessage(t, a, b)

	old.mu.Lock()
	gone := dialRaw(t, b, codec.V5)
	conn := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: codec.V5, KeepAlive: 30, ClientID: []byte("x")}
	conn.Props.SessionExpiry = 3600
	conn.Props.Set(codec.PropSessionExpiry)
	gone.send(conn)
	waitFor(t, "b to ask a", func() bool {
		b.cl.reqs.Lock()
		defer b.cl.reqs.Unlock()
		req = b.cl.reqs.byClient["x"]
		return req != nil
	})
	_ = gone.c.Close()
	return a, b, old, req
}

// sentOn has s take a delivery of m at qos for client, as a peer the
// client's session left sends it on (recRedirect).
func sentOn(t *testing.T, s *Server, client string, m *message, qos byte) {
	t.Helper()
	ob := newOutbox(s, nil)
	if err := s.cl.redirected(ob, appendRedirect(nil, client, m, qos, false, nil, 0, s.now(), true), s.now()); err != nil {
		t.Fatal(err)
	}
	ob.flush()
}

// A message a session held when its node restarted keeps its identity
// (origin.go): when the session then moves and the message comes again by
// another way (the node the session had left before sends it on), the
// client gets it once, as the delivery it had in flight.
func TestClusterRestoredMessageKeepsItsOrigin(t *testing.T) {
	dir := t.TempDir()
	nodes := startCluster(t, 2, func(i int, c *Config) {
		if i == 0 {
			c.DataDir = dir
		}
	})
	a, b := nodes[0], nodes[1]
	sub, m, _ := deliveredOnce(t, a, b)
	sub.send(&codec.Disconnect{})
	sub.expectClosed()

	stopNode(t, a)
	a = restartNode(t, "n1", dir, b)
	waitFor(t, "the nodes to link again", func() bool { return a.cl.node.Linked("n2") && b.cl.node.Linked("n1") })
	again, ca := persistentV5(t, b, "s")
	if !ca.SessionPresent {
		t.Fatal("the session did not move to b")
	}
	if p, ok := again.expect().(*codec.Publish); !ok || string(p.Payload) != "once" || !p.Dup {
		t.Fatalf("got %+v, want once again, in flight", p)
	}
	// The node the session had left before sends m on now.
	sentOn(t, b, "s", m, 2)
	if extra := again.ping(); len(extra) != 0 {
		t.Fatalf("the client got %d packets again: %v", len(extra), extra)
	}
}
