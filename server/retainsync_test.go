package server

import (
	"testing"

	"github.com/eclipse/paho.golang/paho"
)

// A retained message, and a clearing, whose replication records were lost
// (as when the control lane's buffer is full) reach the peer through the
// retained digests.
func TestClusterRetainedConvergeAfterLostRecords(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	n1, n2 := nodes[0], nodes[1]
	pub, _ := dialV5(t, n1, &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30})
	pub.publish(t, &paho.Publish{Topic: "r/gone", QoS: 1, Retain: true, Payload: []byte("old")})
	waitFor(t, "r/gone on n2", func() bool { _, ok := retainedOn(n2, "r/gone"); return ok })

	n1.cl.drop.Store(int32(recRetained))
	pub.publish(t, &paho.Publish{Topic: "r/lost", QoS: 1, Retain: true, Payload: []byte("kept")})
	waitFor(t, "a record dropped", func() bool { return n1.cl.drop.Load() == 0 })
	n1.cl.drop.Store(int32(recRetained))
	pub.publish(t, &paho.Publish{Topic: "r/gone", QoS: 1, Retain: true})
	waitFor(t, "a record dropped", func() bool { return n1.cl.drop.Load() == 0 })

	waitFor(t, "n2 to converge", func() bool {
		// What the digest ticker does every retainDigestEvery.
		n1.cl.sendRetainDigests(true)
		n2.cl.sendRetainDigests(true)
		kept, _ := retainedOn(n2, "r/lost")
		_, gone := retainedOn(n2, "r/gone")
		return kept == "kept" && !gone
	})
	if d1, d2 := n1.cl.digestRetained(), n2.cl.digestRetained(); d1 != d2 {
		t.Fatal("the nodes' retained digests differ after converging")
	}
}

// A retained digest survives its encoding, and a malformed one is refused.
func TestRetainDigestWire(t *testing.T) {
	var d, got retainDigest
	for i := range d {
		d[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	b := appendRetainDigest(nil, &d)
	if err := decodeRetainDigest(b, &got); err != nil || got != d {
		t.Fatalf("round trip: %v", err)
	}
	if err := decodeRetainDigest(b[:len(b)-1], &got); err == nil {
		t.Fatal("a short digest was taken")
	}
}

// retainedOn returns the payload of the retained message of topic on s.
func retainedOn(s *Server, topic string) (string, bool) {
	s.retained.mu.RLock()
	defer s.retained.mu.RUnlock()
	if m := s.retained.get([]byte(topic)); m != nil {
		return string(m.payload), true
	}
	return "", false
}
