package server

import (
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// A QoS 2 publish that a peer's queue cannot take is refused with 0x97
// before anything is delivered: the subscriber on the publisher's node
// does not get it, so the publisher's resend, once the queue has room,
// reaches every subscriber exactly once [MQTT-4.3.3].
func TestClusterRefusedQoS2IsDeliveredNowhere(t *testing.T) {
	nodes := startCluster(t, 2, func(i int, c *Config) {
		if i == 0 {
			c.Cluster.QueueLimit = 1 // one unacknowledged record per lane
		}
	})
	n1, n2 := nodes[0], nodes[1]
	far := dialRaw(t, n2, codec.V5)
	far.connect("far", nil)
	far.subscribe("q/#", 2)
	waitRoutes(t, n1, 1)
	near := dialRaw(t, n1, codec.V5)
	near.connect("near", nil)
	near.subscribe("q/#", 2)
	near.subscribe("mark", 0)

	// n2 delivers to far only once the test lets go of far's session, so
	// the first message forwarded stays unacknowledged and fills n1's lane
	// to n2.
	n2.sessions.Lock()
	farSess := n2.sessions.m["far"]
	n2.sessions.Unlock()
	farSess.mu.Lock()
	released := false
	release := func() {
		if !released {
			released = true
			farSess.mu.Unlock()
		}
	}
	defer release()

	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("q/1", "one", 2, false)
	receiveQoS2(t, near, "one")

	id := pub.nextID()
	pub.send(&codec.Publish{Topic: []byte("q/2"), Payload: []byte("two"), QoS: 2, PacketID: id})
	if a, ok := pub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBREC || a.PacketID != id || a.Code != codec.QuotaExceeded {
		t.Fatalf("publish with n1's queue to n2 full: got %+v, want PUBREC 0x97", a)
	}
	// What pub published before the marker reaches near before it.
	if got := drain(pub, near, "mark"); len(got) != 0 {
		t.Fatalf("the local subscriber got %d packets of a publish refused with 0x97, first %+v; want none", len(got), got[0])
	}

	release()
	waitFor(t, "n1's queue to n2 to drain", func() bool {
		ms := n1.cl.node.Members()
		return len(ms) == 2 && ms[1].Queued == 0
	})
	// The publisher sends the message again, as a new exchange.
	pub.publishAcked("q/2", "two", 2, false)
	receiveQoS2(t, near, "two")
	if got := drain(pub, near, "mark"); len(got) != 0 {
		t.Fatalf("after the resend the local subscriber got %d more packets, first %+v; want none", len(got), got[0])
	}
	receiveQoS2(t, far, "one", "two")
	if got := far.ping(); len(got) != 0 {
		t.Fatalf("the subscriber on n2 got %d more packets, first %+v; want none", len(got), got[0])
	}
}

// receiveQoS2 reads QoS 2 PUBLISHes of the payloads, in order, and
// completes their exchanges; a payload met twice, or another, fails the
// test. The broker may send the next PUBLISH before a PUBREL.
func receiveQoS2(t *testing.T, rc *rawConn, payloads ...string) {
	t.Helper()
	next, open := 0, 0
	for next < len(payloads) || open > 0 {
		switch p := rc.expect().(type) {
		case *codec.Publish:
			if p.QoS != 2 || next == len(payloads) || string(p.Payload) != payloads[next] {
				t.Fatalf("got %+v, want a QoS 2 PUBLISH of %q (the next of %q)", p, payloads[min(next, len(payloads)-1)], payloads)
			}
			next++
			open++
			rc.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
		case *codec.Ack:
			if p.Kind != codec.PUBREL || open == 0 {
				t.Fatalf("got %+v, want a PUBREL", p)
			}
			open--
			rc.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: p.PacketID})
		default:
			t.Fatalf("got %T, want PUBLISH or PUBREL", p)
		}
	}
}
