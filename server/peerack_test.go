package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
	"github.com/gannetmq/gannet/persist"
)

// QoS 1 messages for a clean session on another node cost no disk write
// on either node: the receiving node acknowledges them without writing
// (nothing of theirs outlives its crash), and that acknowledgement stands
// in for the publishing node's store.
func TestClusterCleanForwardWritesNothing(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	sub, _ := dialV5(t, n2, &paho.Connect{ClientID: "sub", CleanStart: true, KeepAlive: 30})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "clean/#", QoS: 1})
	waitRoutes(t, n1, 1)
	pub, _ := dialV5(t, n1, &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	syncs1, syncs2 := n1.store.st.Stats().Syncs, n2.store.st.Stats().Syncs
	const n = 50
	for i := range n {
		pub.publish(t, &paho.Publish{Topic: "clean/x", QoS: 1, Payload: fmt.Appendf(nil, "%d", i)})
	}
	for i := range n {
		if p := sub.expect(t); string(p.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d is %q", i, p.Payload)
		}
	}
	// A few syncs may come from the brokers' own bookkeeping, or from a
	// record whose acknowledgement a loaded machine delayed past
	// peerAckWait; one per message or two is what the forwarded records
	// used to cost (90 for 50 messages).
	if d1, d2 := n1.store.st.Stats().Syncs-syncs1, n2.store.st.Stats().Syncs-syncs2; d1 > n/10 || d2 > n/10 {
		t.Fatalf("%d QoS 1 messages to a clean session on n2 cost %d fsyncs on n1 and %d on n2 (%d records written late)",
			n, d1, d2, n1.stats.peerAckLate.Get())
	}
}

// A QoS 1 message for a peer where no persistent session holds the route
// is acknowledged to its publisher without waiting for the peer, and
// costs no disk write.
func TestClusterCleanPeerIsNotWaitedFor(t *testing.T) {
	s := startCluster(t, 1, nil)[0]
	p := &stalledPeer{clean: true, block: make(chan struct{}), want: 1, all: make(chan struct{})}
	release := startStalledPeer(t, s, p)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	syncs := s.store.st.Stats().Syncs
	start := time.Now()
	pub.publishAcked("load/1", "not held", 1, false)
	if took := time.Since(start); took >= peerAckWait {
		t.Fatalf("PUBACK after %v: it waited for a peer with clean sessions only", took)
	}
	if d := s.store.st.Stats().Syncs - syncs; d != 0 || s.stats.peerAckLate.Get() != 0 {
		t.Fatalf("%d fsyncs and %d records written for a peer with clean sessions only", d, s.stats.peerAckLate.Get())
	}
	release()
	<-p.all
}

// A node's routes say whether a persistent session holds each filter, and
// peers follow as that changes.
func TestClusterRouteDurability(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	durable := func(f string) (bool, bool) {
		n1.cl.peerRoutes.Lock()
		defer n1.cl.peerRoutes.Unlock()
		ps := n1.cl.peerRoutes.m["n2"]
		if ps == nil {
			return false, false
		}
		d, ok := ps.have[f]
		return d, ok
	}
	want := func(f string, d, ok bool) {
		t.Helper()
		waitFor(t, fmt.Sprintf("n1 to see %s as durable=%v present=%v", f, d, ok), func() bool {
			gd, gok := durable(f)
			return gd == d && gok == ok
		})
	}
	clean, _ := dialV5(t, n2, &paho.Connect{ClientID: "clean", CleanStart: true, KeepAlive: 30})
	clean.subscribe(t, paho.SubscribeOptions{Topic: "a/#", QoS: 1})
	want("a/#", false, true)
	kept, _ := dialV5(t, n2, &paho.Connect{ClientID: "kept", CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}})
	kept.subscribe(t, paho.SubscribeOptions{Topic: "a/#", QoS: 1})
	want("a/#", true, true)
	if _, err := kept.Unsubscribe(context.Background(), &paho.Unsubscribe{Topics: []string{"a/#"}}); err != nil {
		t.Fatal(err)
	}
	want("a/#", false, true)
	_ = clean.Disconnect(&paho.Disconnect{})
	want("a/#", false, false)
	_, d1 := n1.cl.routeState("n2")
	n2.cl.ann.Lock()
	d2 := n2.cl.ann.digest
	n2.cl.ann.Unlock()
	if d1 != d2 {
		t.Fatalf("route digests differ: %x on n1, %x on n2", d1, d2)
	}
}

// A peer that does not acknowledge in time (its disk or link is slow):
// the record is written to this node's store, and only then is the
// publisher acknowledged; once the peer acknowledges, the stored copy
// goes.
func TestClusterUnacknowledgedForwardIsStored(t *testing.T) {
	s := startCluster(t, 1, nil)[0]
	p := &stalledPeer{block: make(chan struct{}), want: 1, all: make(chan struct{})}
	release := startStalledPeer(t, s, p)

	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	syncs := s.store.st.Stats().Syncs
	start := time.Now()
	pub.publishAcked("load/1", "held", 1, false)
	if took := time.Since(start); took < peerAckWait {
		t.Fatalf("PUBACK after %v, before the peer acknowledged or the record was written", took)
	}
	if s.stats.peerAckLate.Get() != 1 || s.store.st.Stats().Syncs == syncs {
		t.Fatalf("the record was not written before the PUBACK: %d written late, %d syncs",
			s.stats.peerAckLate.Get(), s.store.st.Stats().Syncs-syncs)
	}
	release()
	<-p.all
	waitFor(t, "the peer's acknowledgement", func() bool { return s.cl.node.Members()[1].Queued == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := spooledRecords(t, s.cfg.DataDir); n != 0 {
		t.Fatalf("%d records still kept for the peer after it acknowledged them", n)
	}
}

// spooledRecords counts the records kept for peers in a stopped broker's
// store.
func spooledRecords(t *testing.T, dir string) int {
	t.Helper()
	st, err := persist.Open(persist.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := 0
	if _, err := st.Load(time.Now(), persist.Loader{Meta: func(key string, val []byte) {
		if _, ok := restoreSpool(key, val); ok {
			n++
		}
	}}); err != nil {
		t.Fatal(err)
	}
	return n
}

// storedMarks returns the positions of peers' streams in a stopped
// broker's store.
func storedMarks(t *testing.T, dir string) []interlink.PeerPosition {
	t.Helper()
	st, err := persist.Open(persist.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out []interlink.PeerPosition
	if _, err := st.Load(time.Now(), persist.Loader{Meta: func(key string, val []byte) {
		if peer, pos, ok := restoreMark(key, val); ok {
			out = append(out, interlink.PeerPosition{Peer: peer, Position: pos})
		}
	}}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A peer's batch that a persistent session dropped as given already
// writes nothing else, but its position is stored: after a crash the
// session no longer remembers what it was given, and would take the
// peer's replay of the batch.
func TestDroppedForwardStoresItsPosition(t *testing.T) {
	dir := t.TempDir()
	s := startCluster(t, 1, func(_ int, c *Config) { c.DataDir = dir })[0]
	dev, _ := persistentV5(t, s, "dev")
	dev.subscribe("t", 1)
	m := newMessage(&codec.Publish{Topic: []byte("t"), QoS: 1, Payload: []byte("m")}, "p", s.now())
	m.origin = 9<<32 | 1
	body := appendForward(nil, &forward{plain: true}, appendMessage(nil, m, s.now(), true))
	receive := func(seq uint64) {
		done := make(chan error, 1)
		s.cl.Receive("p", interlink.Position{Epoch: 7, Lane: 1, Seq: seq},
			[]interlink.Record{{Kind: recForward, Seq: seq, Reliable: true, Body: body}}, func(err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	receive(1)
	if p, ok := dev.expect().(*codec.Publish); !ok || string(p.Payload) != "m" {
		t.Fatalf("got %+v, want m", p)
	}
	receive(2) // the same message again: dropped
	if n := s.stats.droppedSeen.Get(); n != 1 {
		t.Fatalf("%d dropped, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	marks := storedMarks(t, dir)
	if !slices.Contains(marks, interlink.PeerPosition{Peer: "p", Position: interlink.Position{Epoch: 7, Lane: 1, Seq: 2}}) {
		t.Fatalf("stored positions %v, want p's at 2", marks)
	}
}
