package server

import (
	"strconv"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// shareMember connects a clean MQTT 5 session that subscribes to
// $share/g/work at QoS 1.
func shareMember(t *testing.T, s *Server, id string) *rawConn {
	t.Helper()
	rc := dialRaw(t, s, codec.V5)
	rc.connect(id, nil)
	rc.subscribe("$share/g/work", 1)
	return rc
}

// takeWork reads QoS 1 messages until every one of want has arrived,
// acknowledging each, and fails on a message outside want.
func takeWork(t *testing.T, rc *rawConn, want map[string]bool) {
	t.Helper()
	for len(want) > 0 {
		p, ok := rc.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("expected PUBLISH, %d messages missing", len(want))
		}
		rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		if !want[string(p.Payload)] {
			t.Fatalf("unexpected message %q on %q", p.Payload, p.Topic)
		}
		delete(want, string(p.Payload))
	}
}

// The messages a shared subscription's member leaves unacknowledged or
// queued when its clean session ends go to another member, on one node.
func TestSharedMessagesOfALeavingMember(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxInflight = 3 })
	a := shareMember(t, s, "a")
	b := shareMember(t, s, "b")
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	const n = 20
	for i := range n {
		pub.publishAcked("work", "job-"+strconv.Itoa(i), 1, false)
	}
	// a reads its share (3 in flight, the rest queued) and acknowledges
	// nothing; b does its own share and then a's.
	got := map[string]bool{}
	for range 3 {
		p := a.expect().(*codec.Publish)
		got[string(p.Payload)] = true
	}
	a.send(&codec.Disconnect{})
	_ = a.c.Close()

	want := map[string]bool{}
	for i := range n {
		want["job-"+strconv.Itoa(i)] = true
	}
	takeWork(t, b, want)
	if r := s.stats.reshared.Get(); r < 3 {
		t.Fatalf("%d messages handed over, want at least a's 3 in flight", r)
	}
	if d := s.stats.droppedNoMember.Get(); d != 0 {
		t.Fatalf("%d messages dropped for want of a member", d)
	}
}

// A member with room in its window gets the leaving member's messages
// sent at once, each framed as itself (not as the message the loop
// routed last).
func TestSharedMessagesGoStraightToAnIdleMember(t *testing.T) {
	s := startBroker(t, nil)
	a := shareMember(t, s, "a")
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	const n = 3
	want := map[string]bool{}
	for i := range n {
		pub.publishAcked("work", "job-"+strconv.Itoa(i), 1, false)
		want["job-"+strconv.Itoa(i)] = true
	}
	for range n {
		if _, ok := a.expect().(*codec.Publish); !ok {
			t.Fatal("expected PUBLISH")
		}
	}
	b := shareMember(t, s, "b")
	// Something else routed last on the publisher's loop.
	pub.publishAcked("other", "not-work", 1, false)
	a.send(&codec.Disconnect{})
	_ = a.c.Close()
	takeWork(t, b, want)
}

// Across the cluster: the only other member is on another node.
func TestClusterSharedMessagesOfALeavingMember(t *testing.T) {
	nodes := startCluster(t, 2, func(_ int, c *Config) { c.MaxInflight = 3 })
	a := shareMember(t, nodes[0], "a")
	b := shareMember(t, nodes[1], "b")
	waitRoutes(t, nodes[0], 1)
	waitRoutes(t, nodes[1], 1)
	pub := dialRaw(t, nodes[0], codec.V5)
	pub.connect("pub", nil)
	const n = 20
	for i := range n {
		pub.publishAcked("work", "job-"+strconv.Itoa(i), 1, false)
	}
	want := map[string]bool{}
	for i := range n {
		want["job-"+strconv.Itoa(i)] = true
	}
	// a takes one message without acknowledging it and leaves.
	if _, ok := a.expect().(*codec.Publish); !ok {
		t.Fatal("expected PUBLISH")
	}
	a.send(&codec.Disconnect{})
	_ = a.c.Close()
	takeWork(t, b, want)
	if d := nodes[0].stats.droppedNoMember.Get(); d != 0 {
		t.Fatalf("%d messages dropped for want of a member", d)
	}
}

// A member's offline queue survives a restart as its group's: when the
// member's session expires afterwards, its messages go to the other
// member.
func TestSharedMessagesOfAnExpiredMemberAfterRestart(t *testing.T) {
	r := newRestartable(t, nil)
	a := dialRaw(t, r.s, codec.V5)
	a.connect("a", func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 1
		p.Props.Set(codec.PropSessionExpiry)
	})
	a.subscribe("$share/g/work", 1)
	b, _ := persistentV5(t, r.s, "b")
	b.subscribe("$share/g/work", 1)
	for _, rc := range []*rawConn{a, b} {
		rc.send(&codec.Disconnect{})
		rc.expectClosed()
	}
	pub := dialRaw(t, r.s, codec.V5)
	pub.connect("pub", nil)
	const n = 10
	want := map[string]bool{}
	for i := range n {
		pub.publishAcked("work", "job-"+strconv.Itoa(i), 1, false)
		want["job-"+strconv.Itoa(i)] = true
	}
	s := r.restart()
	waitFor(t, "a's session to expire", func() bool { return s.stats.sessionsExpired.Get() > 0 })
	b, ca := persistentV5(t, s, "b")
	if !ca.SessionPresent {
		t.Fatal("b's session lost")
	}
	takeWork(t, b, want)
	if r := s.stats.reshared.Get(); r == 0 || r == n {
		t.Fatalf("%d messages handed over from a, want a's share of %d", r, n)
	}
}
