package server

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
)

// After a session moves, its old node sends on for a while what is still
// routed to it (redirect) while the publishers' nodes also send to the
// new one: the session takes each message once.
func TestClusterMovedSessionTakesEachMessageOnce(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	sub, _ := persistentV5(t, nodes[0], "s")
	sub.subscribe("t", 1)
	waitRoutes(t, nodes[1], 1)
	sub.send(&codec.Disconnect{})
	sub.expectClosed()

	again, ack := persistentV5(t, nodes[1], "s")
	if !ack.SessionPresent {
		t.Fatal("CONNACK without session present: the session did not move")
	}
	// n1 keeps the session's route for movedGrace: n2 forwards to it,
	// and n1 sends each message back.
	waitRoutes(t, nodes[1], 1)
	pub := dialRaw(t, nodes[1], codec.V5)
	pub.connect("p", nil)
	const n = 20
	for i := range n {
		pub.publishAcked("t", strconv.Itoa(i), 1, false)
	}
	got := map[string]bool{}
	for len(got) < n {
		p, ok := again.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected PUBLISH after %d messages", len(got))
		}
		again.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		if got[string(p.Payload)] {
			t.Fatalf("message %s delivered twice", p.Payload)
		}
		got[string(p.Payload)] = true
	}
	waitFor(t, "the copies sent back to be dropped", func() bool { return nodes[1].stats.droppedSeen.Get() == n })
	if extra := again.ping(); len(extra) != 0 {
		t.Fatalf("%d packets after the messages: %v", len(extra), extra)
	}
}

// holdFirstForward has the receiving node hold the first peer batch with a
// forward in it: held waits until one has arrived (failing the test after
// 5s), and free lets it be taken (also when the test ends).
func holdFirstForward(t *testing.T) (held, free func()) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(peer string, recs []interlink.Record) {
		for _, r := range recs {
			if r.Kind == recForward {
				once.Do(func() {
					close(arrived)
					<-release
				})
				return
			}
		}
	}
	testBeforeReceive.Store(&hook)
	t.Cleanup(func() { testBeforeReceive.Store(nil) })
	var freed sync.Once
	free = func() { freed.Do(func() { close(release) }) }
	t.Cleanup(free)
	held = func() {
		t.Helper()
		select {
		case <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("no forward reached the node")
		}
	}
	return held, free
}

// expectSkipped checks that the node n, once it takes the held forward of
// m, gives it to other and not to skipped (who says why).
func expectSkipped(t *testing.T, n *Server, other, skipped *rawConn, who string) {
	t.Helper()
	if p, ok := other.expect().(*codec.Publish); !ok || string(p.Payload) != "m" {
		t.Fatalf("other: got %+v, want m", p)
	}
	waitFor(t, "the forward to be dropped for "+who, func() bool { return n.stats.droppedSeen.Get() == 1 })
	if extra := skipped.ping(); len(extra) != 0 {
		t.Fatalf("%s got %d packets: %v", who, len(extra), extra)
	}
}

// A forward that the node a session left routed while the session was
// still there, and that reaches the session's new node only after the
// session (held back here; in production a slower lane, or a full disk
// there), is not delivered to the session again: it got the message on
// the node it left. The new node's other subscribers get it.
func TestClusterMovedSessionSkipsForwardsRoutedBeforeTheMove(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	other := dialRaw(t, n2, codec.V5)
	other.connect("other", nil)
	other.subscribe("t", 1)
	waitRoutes(t, n1, 1)
	dev, _ := persistentV5(t, n1, "dev")
	dev.subscribe("t", 1)
	waitRoutes(t, n2, 1)

	// n2 holds the first batch with a forward until the session is there.
	held, free := holdFirstForward(t)
	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	pub.send(&codec.Publish{Topic: []byte("t"), Payload: []byte("m"), QoS: 1, PacketID: 1})
	p, ok := dev.expect().(*codec.Publish)
	if !ok || string(p.Payload) != "m" {
		t.Fatalf("dev on n1: got %+v, want m", p)
	}
	dev.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	held()
	dev.ping() // the PUBACK is taken
	dev.send(&codec.Disconnect{})
	dev.expectClosed()
	again, ack := persistentV5(t, n2, "dev")
	if !ack.SessionPresent {
		t.Fatal("CONNACK without session present: the session did not move")
	}
	free()

	expectSkipped(t, n2, other, again, "dev, which had m on n1")
}

// A session made here after this node received a peer's forward it has
// not taken yet (held back here; in production refused while the disk was
// full, or held behind such a one) is not given that forward when it is
// taken: it was routed before the session was here. This node's other
// subscribers get it.
func TestClusterNewSessionSkipsForwardsHeardBeforeIt(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	other := dialRaw(t, n2, codec.V5)
	other.connect("other", nil)
	other.subscribe("t", 1)
	waitRoutes(t, n1, 1)

	held, free := holdFirstForward(t)
	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	pub.send(&codec.Publish{Topic: []byte("t"), Payload: []byte("m"), QoS: 1, PacketID: 1})
	held()
	fresh := dialRaw(t, n2, codec.V5)
	fresh.connect("fresh", nil)
	fresh.subscribe("t", 1)
	free()

	expectSkipped(t, n2, other, fresh, "fresh, which connected after it")
}
