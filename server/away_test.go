package server

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
)

// A client whose node (n2) is down starts a new session on n3 and
// completes a QoS 2 message there, which n3 also queues for n2's copy of
// the session. n3 goes down, n2 comes back, and the client, connecting to
// n1, resumes n2's older copy. When n3 returns and sends n2 what it
// queued, the client must not get the message again, and the session n3
// kept goes to the client's node.
func TestClusterForwardToAnOlderCopySkipsTheClient(t *testing.T) {
	dir2, dir3 := t.TempDir(), t.TempDir()
	nodes := startCluster(t, 3, func(i int, c *Config) {
		switch i {
		case 1:
			c.DataDir = dir2
		case 2:
			c.DataDir = dir3
		}
	})
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	persistent := func(s *Server) (*v5client, *paho.Connack) {
		return dialV5(t, s, &paho.Connect{ClientID: "dev", CleanStart: false, KeepAlive: 30,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}})
	}
	dev, _ := persistent(n2)
	dev.subscribe(t, paho.SubscribeOptions{Topic: "st/#", QoS: 2})
	_ = dev.Disconnect(&paho.Disconnect{})
	waitRoutes(t, n3, 1)

	stopNode(t, n2)
	waitFor(t, "n3 to lose n2", func() bool { return !n3.cl.node.Linked("n2") })

	dev, ack := persistent(n3)
	if ack.SessionPresent {
		t.Fatal("session present on n3 while n2, which holds it, is down")
	}
	dev.subscribe(t, paho.SubscribeOptions{Topic: "st/#", QoS: 2})
	pub, _ := dialV5(t, n3, &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	pub.publish(t, &paho.Publish{Topic: "st/x", QoS: 2, Payload: []byte("once")})
	if p := dev.expect(t); string(p.Payload) != "once" {
		t.Fatalf("got %q, want once", p.Payload)
	}
	waitFor(t, "the client to complete the message", func() bool { return queuedFor(n3, "dev") == 0 })
	_ = dev.Disconnect(&paho.Disconnect{})
	_ = pub.Disconnect(&paho.Disconnect{})
	stopNode(t, n3)

	n2 = restartNode(t, "n2", dir2, n1)
	waitFor(t, "n1 to link to n2", func() bool { return n1.cl.node.Linked("n2") && n2.cl.node.Linked("n1") })
	dev, ack = persistent(n1)
	if !ack.SessionPresent {
		t.Fatal("n2's copy of the session was not resumed on n1")
	}

	n3 = restartNode(t, "n3", dir3, n1)
	// n3 sends n2 the forward it queued; n2's copy moved to n1.
	waitFor(t, "the queued forward to reach n2", func() bool {
		return n2.stats.droppedSeen.Get() > 0 || len(dev.msgs) > 0
	})
	waitFor(t, "n3 to give its session up", func() bool { return n3.lookupSession("dev") == nil })
	pub, _ = dialV5(t, n3, &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	pub.publish(t, &paho.Publish{Topic: "st/x", QoS: 2, Payload: []byte("end")})
	for {
		p := dev.expect(t)
		if string(p.Payload) == "end" {
			break
		}
		t.Fatalf("got %q again on n1 after completing it on n3", p.Payload)
	}
}

// A session made here while a peer that may hold its client's session was
// away is not given a forward routed before it was made (by more than
// clockSkew): the copy's node got it too, where the client's
// subscriptions then were. One routed after, or within the skew, is
// given.
func TestAwaySessionSkipsForwardsRoutedBeforeIt(t *testing.T) {
	s := startCluster(t, 1, nil)[0]
	dev, _ := persistentV5(t, s, "dev")
	dev.subscribe("t", 2)
	made := s.now()
	s.cl.away.add(s.lookupSession("dev"), made)
	forward := func(payload string, routed int64) {
		ob := newOutbox(s, nil)
		m := newMessage(&codec.Publish{Topic: []byte("t"), QoS: 2, Payload: []byte(payload)}, "p", s.now())
		m.stamp = routed
		ob.src = interlink.PeerPosition{Peer: "p", Position: interlink.Position{Epoch: 1, Lane: 1, Seq: 1}}
		s.routeFrom(ob, m, &forward{plain: true})
		ob.src = interlink.PeerPosition{}
		ob.flush()
	}
	forward("before", made-2*int64(clockSkew))
	forward("within the skew", made-int64(clockSkew)/2)
	if p, ok := dev.expect().(*codec.Publish); !ok || string(p.Payload) != "within the skew" {
		t.Fatalf("got %+v, want only the message routed within the skew", p)
	}
	if n := s.stats.droppedSeen.Get(); n != 1 {
		t.Fatalf("%d forwards dropped, want 1", n)
	}
}

// A message routed while the node holding a client's session was down,
// before the client started a new session on another node, reaches the
// client when the node comes back, however long it was away: merged into
// the new session with the copy, it is not taken for one the new session
// had (it was routed before the new session subscribed).
func TestClusterCopyBackLateKeepsWhatTheNewSessionMissed(t *testing.T) {
	dir, n1, n2, persistent := staleSetup(t, 1)
	pub, _ := dialV5(t, n1, &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	stopNode(t, n2)
	waitFor(t, "n1 to lose n2", func() bool { return !n1.cl.node.Linked("n2") })
	pub.publish(t, &paho.Publish{Topic: "st/x", QoS: 1, Payload: []byte("missed")}) // to n2's queue alone
	dev, ack := persistent(n1)
	if ack.SessionPresent {
		t.Fatal("session present on n1 while n2, which holds it, is down")
	}
	dev.subscribe(t, paho.SubscribeOptions{Topic: "st/#", QoS: 1})
	// n2 stays away longer than the new session remembers what it was
	// given (recentWindow).
	ss := n1.lookupSession("dev")
	ss.mu.Lock()
	ss.mu.recent = nil
	ss.mu.Unlock()

	restartNode(t, "n2", dir, n1)
	if p := dev.expect(t); string(p.Payload) != "missed" {
		t.Fatalf("got %q, want the message routed while n2 was down", p.Payload)
	}
}

// A message sent on by a stale copy's node (redirect) that was routed
// before the client's session here subscribed went only to the copy: it
// is delivered, not dropped as one the session took directly. (The copy
// was handed over before the peer's queue brought it the message: 1 run
// in 20 of TestClusterCopyBackLateKeepsWhatTheNewSessionMissed.)
func TestClusterSentOnFromBeforeTheSessionIsDelivered(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1 := nodes[0]
	routed := n1.stamp()
	dev, _ := persistentV5(t, n1, "dev")
	dev.subscribe("st/#", 1)
	ss := n1.lookupSession("dev")
	ss.mu.Lock()
	ss.mu.recent = nil // old enough to have forgotten what it was given
	since := ss.mu.since
	ss.mu.Unlock()
	if since <= routed+int64(routeLag) {
		// The stamp is a hybrid clock: push the session past routeLag.
		routed = since - 2*int64(routeLag)
	}
	m := newMessage(&codec.Publish{Topic: []byte("st/x"), QoS: 1, Payload: []byte("missed")}, "pub", routed)
	n1.cl.origins.stamp(m)
	m.stamp = routed
	ob := newOutbox(n1, nil)
	if err := n1.cl.redirected(ob, appendRedirect(nil, "dev", m, 1, false, nil, 0, n1.now(), true), n1.now()); err != nil {
		t.Fatal(err)
	}
	ob.flush()
	p, ok := dev.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "missed" {
		t.Fatalf("got %+v, want the message routed before the session subscribed", p)
	}
}
