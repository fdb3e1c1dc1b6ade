package server

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
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

	shutdown := func(s *Server) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	shutdown(n2)
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
	shutdown(n3)

	n2 = startBroker(t, func(c *Config) {
		clusterMember(c, "n2", n1)
		c.DataDir = dir2
	})
	waitFor(t, "n1 to link to n2", func() bool { return n1.cl.node.Linked("n2") && n2.cl.node.Linked("n1") })
	dev, ack = persistent(n1)
	if !ack.SessionPresent {
		t.Fatal("n2's copy of the session was not resumed on n1")
	}

	n3 = startBroker(t, func(c *Config) {
		clusterMember(c, "n3", n1)
		c.DataDir = dir3
	})
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
