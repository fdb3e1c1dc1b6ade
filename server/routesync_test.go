package server

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"
)

// A route announcement lost on the way (as when the control lane's buffer
// is full) is repaired by the digest that follows it: the peer sees that
// its copy of the route set differs, asks for the whole set, and forwards
// QoS 1 messages to the subscriber again.
func TestClusterRoutesConvergeAfterALostAnnouncement(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	nodes[1].cl.drop.Store(int32(recRouteAdd))
	sub, _ := dialV5(t, nodes[1], &paho.Connect{ClientID: "sub", CleanStart: true, KeepAlive: 30})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "lost/#", QoS: 1})
	waitFor(t, "the announcement dropped", func() bool { return nodes[1].cl.drop.Load() == 0 })

	nodes[1].cl.sendDigests() // what the digest ticker does every routeDigestEvery
	waitRoutes(t, nodes[0], 1)
	pub, _ := dialV5(t, nodes[0], &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	pub.publish(t, &paho.Publish{Topic: "lost/x", QoS: 1, Payload: []byte("found")})
	if p := sub.expect(t); string(p.Payload) != "found" {
		t.Fatalf("got %q", p.Payload)
	}
}

// A numbered announcement that arrives after a lost one shows the gap at
// once: the peer asks for the whole set without waiting for a digest.
func TestClusterRoutesResyncOnAGap(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	nodes[1].cl.drop.Store(int32(recRouteAdd))
	sub, _ := dialV5(t, nodes[1], &paho.Connect{ClientID: "sub", CleanStart: true, KeepAlive: 30})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "a/#", QoS: 1})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "b/#", QoS: 1})
	waitRoutes(t, nodes[0], 2)
	if n, _ := nodes[0].cl.routeState("n2"); n != 2 {
		t.Fatalf("n1 holds %d of n2's routes", n)
	}
}

// A whole set that is lost on its way is asked for again after the next
// digest (at most once per routeResyncGap).
func TestClusterRoutesResyncLostSet(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	sub, _ := dialV5(t, nodes[1], &paho.Connect{ClientID: "sub", CleanStart: true, KeepAlive: 30})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "a/#", QoS: 1})
	waitRoutes(t, nodes[0], 1)
	nodes[1].cl.drop.Store(int32(recRouteAdd))
	sub.subscribe(t, paho.SubscribeOptions{Topic: "b/#", QoS: 1})
	waitFor(t, "the announcement dropped", func() bool { return nodes[1].cl.drop.Load() == 0 })
	nodes[1].cl.drop.Store(int32(recRoutesAll))
	nodes[1].cl.sendDigests()
	waitFor(t, "the whole set dropped", func() bool { return nodes[1].cl.drop.Load() == 0 })
	waitFor(t, "n2's routes on n1", func() bool {
		nodes[1].cl.sendDigests()
		return nodes[0].cl.routes.Count() == 2
	})
	_, d1 := nodes[0].cl.routeState("n2")
	nodes[1].cl.ann.Lock()
	d2 := nodes[1].cl.ann.digest
	nodes[1].cl.ann.Unlock()
	if d1 != d2 {
		t.Fatalf("digests differ after the resync: %x on n1, %x on n2", d1, d2)
	}
}

// Digests of equal sets agree whatever order the filters came in, and
// differ when one filter differs.
func TestRouteDigest(t *testing.T) {
	a, b := routeDigest("x/#", "y/+", "z"), routeDigest("z", "x/#", "y/+")
	if a != b {
		t.Fatalf("order changed the digest: %x %x", a, b)
	}
	if c := routeDigest("x/#", "y/+", "z/"); c == a {
		t.Fatal("different sets, same digest")
	}
	if routeDigest() != 0 {
		t.Fatal("the empty set's digest is not 0")
	}
}

// routeDigest is the digest of a set of filters none of which a
// persistent session holds, as a node computes it route by route.
func routeDigest(filters ...string) uint64 {
	var d uint64
	for _, f := range filters {
		d ^= routeEntryHash(f, false)
	}
	return d
}
