package server

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
)

// Retained versions outlive a node's restart: the stamps of its retained
// messages and of its clearings are kept in the store, and its stamp clock
// resumes past every stamp it kept. A peer that was away while one
// retained message was cleared and another changed, and that comes back
// after the node restarted, brings back neither the cleared message nor
// the older version of the changed one; it takes the node's versions.
func TestClusterRetainedVersionsSurviveRestart(t *testing.T) {
	lg := logWhileRunning(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	nodes := startCluster(t, 2, func(i int, c *Config) {
		c.Logger = lg
		c.DataDir = dirs[i]
	})
	n1, n2 := nodes[0], nodes[1]
	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("r/cleared", "old", 1, true)
	pub.publishAcked("r/changed", "old", 1, true)
	waitFor(t, "n2 to hold both retained messages", func() bool {
		return len(n2.retained.match(nil, []byte("r/#"))) == 2
	})

	// n2 goes away. Meanwhile n1 clears one message, changes the other,
	// and takes a version of a third from a peer whose clock runs an hour
	// ahead.
	ic2 := *n2.cfg.Cluster
	stopNode(t, n2)
	pub.publishAcked("r/cleared", "", 1, true)
	pub.publishAcked("r/changed", "new", 1, true)
	ahead := time.Now().Add(time.Hour).UnixNano()
	fast := newMessage(&codec.Publish{Topic: []byte("r/future"), Payload: []byte("fast"), Retain: true}, "fast", 0)
	fast.stamp = ahead
	applied := make(chan error, 1)
	n1.cl.Receive("n3", interlink.Position{}, []interlink.Record{{Kind: recRetained, Body: appendRetained(nil, fast, n1.now())}},
		func(err error) { applied <- err })
	if err := <-applied; err != nil {
		t.Fatalf("storing the fast peer's version: %v", err)
	}
	_, changedStamp := retainedVersion(n1, "r/changed")
	clearedStamp := tombstone(n1, "r/cleared")
	if changedStamp == 0 || clearedStamp == 0 {
		t.Fatalf("stamps before the restart: changed %d, cleared %d; want both set", changedStamp, clearedStamp)
	}

	// n1 restarts on its data while n2 is still away.
	ic1 := *n1.cfg.Cluster
	stopNode(t, n1)
	n1 = startBroker(t, func(c *Config) {
		c.Cluster = &ic1
		c.Logger = lg
		c.DataDir = dirs[0]
	})
	if p, s := retainedVersion(n1, "r/changed"); p != "new" || s != changedStamp {
		t.Errorf("after the restart r/changed is %q at stamp %d, want %q at %d", p, s, "new", changedStamp)
	}
	if s := tombstone(n1, "r/cleared"); s != clearedStamp {
		t.Errorf("after the restart the clearing of r/cleared has stamp %d, want %d", s, clearedStamp)
	}
	// The stamp clock does not go back to the wall clock: a version made
	// now orders after the fast peer's.
	pub = dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("r/future", "later", 1, true)
	if _, s := retainedVersion(n1, "r/future"); s <= ahead {
		t.Errorf("a version made after the restart has stamp %d, not past the kept %d", s, ahead)
	}

	// n2 comes back on its data, with its old copies.
	ic2.Listen, ic2.GossipListen = "127.0.0.1:0", "127.0.0.1:0"
	ic2.Join = []string{"gossip=" + n1.cl.node.Members()[0].Gossip}
	n2 = startBroker(t, func(c *Config) {
		c.Cluster = &ic2
		c.Logger = lg
		c.DataDir = dirs[1]
	})
	waitFor(t, "n1 and the restarted n2 to link", func() bool {
		for _, s := range []*Server{n1, n2} {
			ms := s.cl.node.Members()
			if len(ms) != 2 || ms[1].LanesUp != s.cfg.Cluster.Lanes {
				return false
			}
		}
		return true
	})
	// n2 offers n1 everything it holds (as it did when the link came up),
	// and then a marker, which n1 takes after the offer: they share the
	// control lane.
	n2.cl.PeerUp("n1")
	mark := dialRaw(t, n2, codec.V5)
	mark.connect("mark", nil)
	mark.publishAcked("marker", "x", 1, true)
	waitFor(t, "the marker on n1", func() bool { return len(n1.retained.match(nil, []byte("marker"))) == 1 })

	want := map[string]string{"r/changed": "new", "r/future": "later"}
	for i, s := range []*Server{n1, n2} {
		waitFor(t, "the retained messages to converge", func() bool {
			got := map[string]string{}
			for _, m := range s.retained.match(nil, []byte("r/#")) {
				got[string(m.topic)] = string(m.payload)
			}
			if i == 0 && !maps.Equal(got, want) {
				t.Fatalf("n1 holds %v after n2 came back, want %v", got, want)
			}
			return maps.Equal(got, want)
		})
	}
}

// stopNode shuts a broker down.
func stopNode(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// retainedVersion returns the payload and stamp of topic's retained
// message on s.
func retainedVersion(s *Server, topic string) (string, int64) {
	s.retained.mu.RLock()
	defer s.retained.mu.RUnlock()
	m := s.retained.get([]byte(topic))
	if m == nil {
		return "", 0
	}
	return string(m.payload), m.stamp
}

// tombstone returns the stamp of topic's clearing on s; 0: none.
func tombstone(s *Server, topic string) int64 {
	s.retained.mu.RLock()
	defer s.retained.mu.RUnlock()
	return s.retained.tombs[topic]
}

// Clearings do not pile up: one older than tombLife is forgotten in memory
// and in the store, and one that expired while the node was down is
// deleted as the store is loaded.
func TestClusterClearingsExpire(t *testing.T) {
	lg := logWhileRunning(t)
	dir := t.TempDir()
	n1 := startCluster(t, 1, func(_ int, c *Config) {
		c.Logger = lg
		c.DataDir = dir
	})[0]
	ic := *n1.cfg.Cluster
	restart := func(mutate func(*Config)) {
		t.Helper()
		stopNode(t, n1)
		n1 = startBroker(t, func(c *Config) {
			cc := ic
			c.Cluster = &cc
			c.Logger = lg
			c.DataDir = dir
			if mutate != nil {
				mutate(c)
			}
		})
	}
	pub := dialRaw(t, n1, codec.V5)
	pub.connect("pub", nil)
	for _, topic := range []string{"gone/1", "gone/2"} {
		pub.publishAcked(topic, "x", 1, true)
		pub.publishAcked(topic, "", 1, true)
	}
	if n, b := n1.retained.tombCount(); n != 2 || b != int64(len("gone/1")+len("gone/2")) {
		t.Fatalf("%d clearings of %d bytes kept, want 2 of %d", n, b, len("gone/1")+len("gone/2"))
	}
	n1.forgetClearings(time.Now().Add(n1.tombLife() + time.Minute))
	if n, b := n1.retained.tombCount(); n != 0 || b != 0 {
		t.Fatalf("%d clearings of %d bytes kept past their life, want none", n, b)
	}
	pub.publishAcked("gone/3", "", 1, true)

	restart(nil)
	if s1, s2, s3 := tombstone(n1, "gone/1"), tombstone(n1, "gone/2"), tombstone(n1, "gone/3"); s1 != 0 || s2 != 0 || s3 == 0 {
		t.Fatalf("clearings after a restart: gone/1 %d, gone/2 %d, gone/3 %d; want only gone/3's", s1, s2, s3)
	}
	// Down past gone/3's life: here, a life of a nanosecond.
	restart(func(c *Config) {
		c.MaxSessionExpiry = 0
		c.Cluster.ForgetAfter = time.Nanosecond
	})
	if n, _ := n1.retained.tombCount(); n != 0 {
		t.Fatalf("%d clearings loaded past their life, want none", n)
	}
	restart(nil)
	if n, _ := n1.retained.tombCount(); n != 0 {
		t.Fatalf("%d clearings in the store after one past its life was loaded, want none", n)
	}
}
