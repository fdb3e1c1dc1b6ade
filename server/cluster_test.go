package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/interlink"
)

// startCluster runs n brokers in this process as one cluster: the other
// nodes join the first. It returns once every node links to every other.
func startCluster(t *testing.T, n int, mutate func(i int, c *Config)) []*Server {
	t.Helper()
	var nodes []*Server
	for i := range n {
		var seed *Server
		if i > 0 {
			seed = nodes[0]
		}
		nodes = append(nodes, startBroker(t, func(c *Config) {
			clusterMember(c, fmt.Sprintf("n%d", i+1), seed)
			if mutate != nil {
				mutate(i, c)
			}
		}))
	}
	waitFor(t, "a full mesh", func() bool {
		for _, s := range nodes {
			for _, m := range s.cl.node.Members()[1:] {
				if m.LanesUp != s.cfg.Cluster.Lanes {
					return false
				}
			}
			if len(s.cl.node.Members()) != n {
				return false
			}
		}
		return true
	})
	return nodes
}

// clusterMember makes c a cluster node named name that joins seed (nil:
// the first node).
func clusterMember(c *Config, name string, seed *Server) {
	ic := interlink.DefaultConfig()
	ic.NodeName = name
	ic.Listen = "127.0.0.1:0"
	ic.GossipListen = "127.0.0.1:0"
	ic.FailureTimeout = time.Second
	ic.Secret = "server cluster test secret"
	if seed != nil {
		ic.Join = []string{"gossip=" + seed.cl.node.Members()[0].Gossip}
	}
	c.Cluster = &ic
}

// restartNode starts node name again on its data directory dir, joining
// the cluster through seed.
func restartNode(t *testing.T, name, dir string, seed *Server) *Server {
	t.Helper()
	return startBroker(t, func(c *Config) {
		clusterMember(c, name, seed)
		c.DataDir = dir
	})
}

// waitRoutes waits until s knows of want filters announced by peers.
func waitRoutes(t *testing.T, s *Server, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d routes", want), func() bool { return s.cl.routes.Count() == want })
}

func TestClusterTakeoverMovesQueuedMessages(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	sub, _ := dialV5(t, nodes[0], &paho.Connect{ClientID: "dev1", CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(300)}})
	sub.subscribe(t, paho.SubscribeOptions{Topic: "t/q", QoS: 1})
	_ = sub.Disconnect(&paho.Disconnect{})
	waitRoutes(t, nodes[1], 1)

	pub, _ := dialV5(t, nodes[1], &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	for i := range 3 {
		pub.publish(t, &paho.Publish{Topic: "t/q", QoS: 1, Payload: fmt.Appendf(nil, "m%d", i)})
	}
	waitFor(t, "messages queued on n1", func() bool {
		nodes[0].sessions.Lock()
		ss := nodes[0].sessions.m["dev1"]
		nodes[0].sessions.Unlock()
		if ss == nil {
			return false
		}
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.mu.queue.len() == 3
	})

	again, ack := dialV5(t, nodes[2], &paho.Connect{ClientID: "dev1", CleanStart: false, KeepAlive: 30,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(300)}})
	if !ack.SessionPresent {
		t.Fatal("CONNACK on n3 without session present: the session did not move")
	}
	for i := range 3 {
		if p := again.expect(t); string(p.Payload) != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d: %q", i, p.Payload)
		}
	}
}

// Every QoS 1 and 2 message published on one node reaches a subscriber on
// another exactly once.
func TestClusterForwardsEveryMessage(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	for _, qos := range []byte{1, 2} {
		sub, _ := dialV5(t, nodes[1], &paho.Connect{ClientID: fmt.Sprintf("sub%d", qos), CleanStart: true, KeepAlive: 30})
		sub.subscribe(t, paho.SubscribeOptions{Topic: fmt.Sprintf("q%d/#", qos), QoS: qos})
		waitRoutes(t, nodes[0], int(qos))
		pub, _ := dialV5(t, nodes[0], &paho.Connect{ClientID: fmt.Sprintf("pub%d", qos), CleanStart: true, KeepAlive: 30})
		const n = 500
		for i := range n {
			pub.publish(t, &paho.Publish{Topic: fmt.Sprintf("q%d/x", qos), QoS: qos, Payload: fmt.Appendf(nil, "%d", i)})
		}
		for i := range n {
			if p := sub.expect(t); string(p.Payload) != fmt.Sprint(i) {
				t.Fatalf("QoS %d: message %d is %q", qos, i, p.Payload)
			}
		}
	}
}

// $SYS statistics describe the node that publishes them: a peer's never
// replace a node's own.
func TestClusterSysStaysLocal(t *testing.T) {
	nodes := startCluster(t, 2, func(i int, c *Config) {
		if i == 0 {
			c.SysInterval = 20 * time.Millisecond
		}
	})
	var clients []*v5client
	for i := range 3 {
		vc, _ := dialV5(t, nodes[0], &paho.Connect{ClientID: fmt.Sprintf("c%d", i), CleanStart: true, KeepAlive: 30})
		clients = append(clients, vc)
	}
	// n1 publishes its statistics; wait until it has done so with the
	// three clients counted.
	waitFor(t, "n1's $SYS statistics", func() bool {
		ms := nodes[0].retained.match(nil, []byte("$SYS/broker/clients/connected"))
		return len(ms) == 1 && string(ms[0].payload) == "3"
	})
	// A retained message published on n1 after that reaches n2, so the
	// statistics would have too.
	clients[0].publish(t, &paho.Publish{Topic: "marker", QoS: 1, Retain: true, Payload: []byte("x")})
	waitFor(t, "the marker on n2", func() bool { return len(nodes[1].retained.match(nil, []byte("marker"))) == 1 })
	if ms := nodes[1].retained.match(nil, []byte("$SYS/#")); len(ms) != 0 {
		t.Fatalf("n2 holds %d $SYS messages from n1, e.g. %s", len(ms), ms[0].topic)
	}
}

// A retained message set and cleared in quick succession (within one tick
// of the broker clock) is cleared on every node: each version made on a
// node orders after the one before.
func TestClusterRetainedClearedAtOnce(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	pub, _ := dialV5(t, nodes[0], &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	for i := range 20 {
		topic := fmt.Sprintf("site/%d/status", i)
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("stale")})
		pub.publish(t, &paho.Publish{Topic: topic, QoS: 1, Retain: true})
	}
	// Replicated in order on the control lane: the marker comes last.
	pub.publish(t, &paho.Publish{Topic: "marker", QoS: 1, Retain: true, Payload: []byte("x")})
	waitFor(t, "the marker on n2", func() bool { return len(nodes[1].retained.match(nil, []byte("marker"))) == 1 })
	if ms := nodes[1].retained.match(nil, []byte("site/#")); len(ms) != 0 {
		t.Fatalf("n2 kept %d cleared retained messages, e.g. %s", len(ms), ms[0].topic)
	}
}

// A retained version made on a node whose clock runs an hour ahead does
// not outlive a later one: a node that has seen it stamps what it makes
// afterwards later still, so every node converges on the newest.
func TestClusterRetainedAfterAFastClock(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	ahead := time.Now().Add(time.Hour).UnixNano()
	far := newMessage(&codec.Publish{Topic: []byte("site/1/status"), Payload: []byte("from the future"), Retain: true}, "far", 0)
	far.stamp = ahead
	rec := []interlink.Record{{Kind: recRetained, Body: appendRetained(nil, far, nodes[0].now())}}
	for _, s := range nodes { // as a third node with a fast clock would have sent it
		s.cl.Receive("n3", interlink.Position{}, rec, func(error) {})
	}
	pub, _ := dialV5(t, nodes[0], &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	pub.publish(t, &paho.Publish{Topic: "site/1/status", QoS: 1, Retain: true, Payload: []byte("fresh")})
	pub.publish(t, &paho.Publish{Topic: "marker", QoS: 1, Retain: true, Payload: []byte("x")})
	waitFor(t, "the marker on n2", func() bool { return len(nodes[1].retained.match(nil, []byte("marker"))) == 1 })
	for i, s := range nodes {
		ms := s.retained.match(nil, []byte("site/1/status"))
		if len(ms) != 1 || string(ms[0].payload) != "fresh" {
			t.Fatalf("n%d holds %d retained messages for the topic, first %q; want the later one", i+1, len(ms), ms[0].payload)
		}
		if ms[0].stamp <= ahead {
			t.Fatalf("n%d: the later version's stamp %d is not past the fast clock's %d", i+1, ms[0].stamp, ahead)
		}
	}
}

// A client id in use on one node is taken from that connection by a
// CONNECT on another, whatever either asks for its session; only a
// persistent session moves [MQTT-3.1.4-2, MQTT-3.1.2-6].
func TestClusterClientIDTakeoverMatrix(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n := 0
	for _, ov := range []codec.Version{codec.V311, codec.V5} {
		for _, oclean := range []bool{true, false} {
			for _, nv := range []codec.Version{codec.V311, codec.V5} {
				for _, nclean := range []bool{true, false} {
					n++
					name := fmt.Sprintf("old=%s,clean=%v/new=%s,clean=%v", ov, oclean, nv, nclean)
					id := fmt.Sprintf("cmatrix-%d", n)
					old := dialRaw(t, nodes[0], ov)
					connectAs(old, id, oclean)
					nu := dialRaw(t, nodes[1], nv)
					ca := connectAs(nu, id, nclean)
					if want := !oclean && !nclean; ca.SessionPresent != want {
						t.Errorf("%s: session present %v, want %v", name, ca.SessionPresent, want)
					}
					got := old.expectClosed()
					if ov == codec.V5 && (len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.SessionTakenOver) {
						t.Errorf("%s: old connection got %v, want DISCONNECT 0x8E", name, got)
					}
					nu.send(&codec.Disconnect{})
					nu.expectClosed()
				}
			}
		}
	}
}
