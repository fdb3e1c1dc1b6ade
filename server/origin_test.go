package server

import (
	"strconv"
	"testing"

	"github.com/gannetmq/gannet/codec"
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
