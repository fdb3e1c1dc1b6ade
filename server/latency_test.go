package server

import (
	"fmt"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// A sampled publish is timed up to the write of its subscriber whether the
// subscriber shares the publisher's event loop or is reached through
// another loop's inbox; PUBACKs are timed only with a store; and every
// loop reports its lag.
func TestLatencyHistograms(t *testing.T) {
	t.Parallel()
	s := startBroker(t, func(c *Config) {
		c.EventLoops = 2
		c.Durability = DurabilityNone
	})
	subs := map[string]*rawConn{}
	for _, id := range []string{"lat-a", "lat-b"} {
		rc := dialRaw(t, s, codec.V5)
		rc.connect(id, nil)
		rc.subscribe("lat/"+id, 0)
		subs[id] = rc
	}
	pub := dialRaw(t, s, codec.V5)
	pub.connect("lat-pub", nil)
	loopOf := func(id string) *loop {
		s.sessions.Lock()
		defer s.sessions.Unlock()
		ss := s.sessions.m[id]
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.mu.cl.loop
	}
	same, other := "", ""
	for id := range subs {
		if loopOf(id) == loopOf("lat-pub") {
			same = id
		} else {
			other = id
		}
	}
	if same == "" || other == "" {
		t.Fatalf("with two event loops, expected one subscriber on the publisher's loop and one on the other")
	}

	count := func(name string) float64 { return opsScrape(t, s)[name+"_count"] }
	for _, c := range []struct{ what, id string }{{"on the publisher's loop", same}, {"on another loop", other}} {
		before := count("gannet_delivery_latency_seconds")
		// One publish in each tick of the broker clock is timed: publish
		// until one is.
		n := 0
		waitFor(t, "a timed delivery to a subscriber "+c.what, func() bool {
			n++
			pub.send(&codec.Publish{Topic: []byte("lat/" + c.id), Payload: fmt.Appendf(nil, "%d", n)})
			return count("gannet_delivery_latency_seconds") > before
		})
		for i := 1; i <= n; i++ {
			if p, ok := subs[c.id].expect().(*codec.Publish); !ok || string(p.Payload) != fmt.Sprint(i) {
				t.Fatalf("subscriber %s: got %+v, want message %d", c.what, p, i)
			}
		}
	}
	m := opsScrape(t, s)
	if sum, n := m["gannet_delivery_latency_seconds_sum"], m["gannet_delivery_latency_seconds_count"]; sum <= 0 || sum/n > 5 {
		t.Errorf("delivery latency: %v s over %v samples, want a positive mean under 5 s", sum, n)
	}

	// Without a store a PUBACK waits for nothing: it is not timed.
	for range 5 {
		pub.publishAcked("lat/none", "q1", 1, false)
	}
	if n := count("gannet_publish_ack_latency_seconds"); n != 0 {
		t.Errorf("%v PUBACKs timed with --durability none, want none", n)
	}
	waitFor(t, "the event loops' lag", func() bool { return count("gannet_event_loop_lag_seconds") >= 2 })
}
