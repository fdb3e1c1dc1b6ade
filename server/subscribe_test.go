package server

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

func TestSubackCodePerFilter(t *testing.T) {
	s := startBroker(t, nil)
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		rc := dialRaw(t, s, v)
		rc.connect("codes", nil)
		rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{
			{Filter: []byte("a/+/c"), QoS: 0},
			{Filter: []byte("a/#/c"), QoS: 1}, // '#' not last [MQTT-4.7.1-1]
			{Filter: []byte("b/#"), QoS: 2},
			{Filter: []byte("$share/g/x"), QoS: 1},
			{Filter: []byte("a+"), QoS: 1}, // '+' not alone [MQTT-4.7.1-2]
		}})
		sa := rc.expect().(*codec.Suback)
		fail := codec.TopicFilterInvalid
		if v != codec.V5 {
			fail = codec.V3SubackFailure
		}
		want := []codec.ReasonCode{codec.GrantedQoS0, fail, codec.GrantedQoS2, codec.GrantedQoS1, fail}
		if sa.PacketID != 1 || fmt.Sprint(sa.Codes) != fmt.Sprint(want) {
			t.Fatalf("%v: SUBACK %v, want %v", v, sa.Codes, want)
		}
		rc.send(&codec.Unsubscribe{PacketID: 2, Filters: [][]byte{[]byte("a/+/c"), []byte("never/subscribed"), []byte("$share/g/x")}})
		ua := rc.expect().(*codec.Unsuback)
		if ua.PacketID != 2 {
			t.Fatalf("UNSUBACK id %d", ua.PacketID)
		}
		if v == codec.V5 {
			want := []codec.ReasonCode{codec.Success, codec.NoSubscriptionExisted, codec.Success}
			if fmt.Sprint(ua.Codes) != fmt.Sprint(want) {
				t.Fatalf("UNSUBACK %v, want %v", ua.Codes, want)
			}
		}
	}
}

func TestWildcards(t *testing.T) {
	s := startBroker(t, nil)
	rc := sub(t, s, codec.V5, "w", codec.Subscription{Filter: []byte("sport/tennis/+/score")}, codec.Subscription{Filter: []byte("news/#")})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	for _, topic := range []string{"sport/tennis/p1/score", "sport/tennis/p1/rank", "news", "news/world/today", "sport/golf/p1/score"} {
		pub.send(&codec.Publish{Topic: []byte(topic), Payload: []byte(topic)})
	}
	var topics []string
	for _, p := range drain(pub, rc, "news/marker") {
		topics = append(topics, string(p.Topic))
	}
	if fmt.Sprint(topics) != "[sport/tennis/p1/score news news/world/today]" {
		t.Fatalf("got %v", topics)
	}
	// An unsubscribed filter stops matching.
	rc.send(&codec.Unsubscribe{PacketID: 9, Filters: [][]byte{[]byte("news/#")}})
	rc.expect()
	pub.send(&codec.Publish{Topic: []byte("news"), Payload: []byte("late")})
	if got := drain(pub, rc, "sport/tennis/x/score"); len(got) != 0 {
		t.Fatalf("after unsubscribe: %v", got)
	}
}

func TestSharedSubscriptions(t *testing.T) {
	for _, policy := range []SharedPolicy{SharedRoundRobin, SharedRandom, SharedHash} {
		t.Run(string(policy), func(t *testing.T) {
			// One event loop, so that a PINGREQ round trip orders after
			// every delivery (see drain for the general case).
			s := startBroker(t, func(c *Config) { c.SharedPolicy = policy; c.EventLoops = 1 })
			var members []*rawConn
			for i := range 3 {
				members = append(members, sub(t, s, codec.V5, fmt.Sprintf("m%d", i), codec.Subscription{Filter: []byte("$share/g/jobs/#"), QoS: 1}))
			}
			plain := sub(t, s, codec.V5, "plain", codec.Subscription{Filter: []byte("jobs/#")})
			pub := dialRaw(t, s, codec.V5)
			pub.connect("p", nil)
			const n = 30
			for i := range n {
				pub.send(&codec.Publish{QoS: 1, PacketID: uint16(i + 1), Topic: []byte("jobs/x"), Payload: []byte{byte(i)}})
				pub.expect()
			}
			// One member of the group gets each message [MQTT-4.8.2-?]; the
			// plain subscriber gets all of them.
			seen := map[byte]int{}
			counts := make([]int, len(members))
			for i, m := range members {
				for _, p := range m.ping() {
					pp := p.(*codec.Publish)
					seen[pp.Payload[0]]++
					counts[i]++
					m.send(&codec.Ack{Kind: codec.PUBACK, PacketID: pp.PacketID})
				}
			}
			if len(seen) != n {
				t.Fatalf("group got %d distinct messages, want %d", len(seen), n)
			}
			for k, c := range seen {
				if c != 1 {
					t.Fatalf("message %d delivered %d times in the group", k, c)
				}
			}
			switch policy {
			case SharedRoundRobin:
				for i, c := range counts {
					if c != n/len(members) {
						t.Fatalf("round robin: member %d got %d of %d", i, c, n)
					}
				}
			case SharedHash:
				// One publisher: every message goes to the same member.
				nonzero := 0
				for _, c := range counts {
					if c > 0 {
						nonzero++
					}
				}
				if nonzero != 1 {
					t.Fatalf("hash: counts %v, want one member", counts)
				}
			}
			if got := plain.ping(); len(got) != n {
				t.Fatalf("plain subscriber got %d", len(got))
			}
		})
	}
}

// A member that leaves is no longer picked.
func TestSharedMemberLeaves(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.EventLoops = 1 })
	a := sub(t, s, codec.V5, "a", codec.Subscription{Filter: []byte("$share/g/t")})
	b := sub(t, s, codec.V5, "b", codec.Subscription{Filter: []byte("$share/g/t")})
	b.send(&codec.Disconnect{})
	b.expectClosed()
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	for range 4 {
		pub.send(&codec.Publish{Topic: []byte("t"), Payload: []byte("x")})
	}
	pub.ping()
	if got := a.ping(); len(got) != 4 {
		t.Fatalf("remaining member got %d of 4", len(got))
	}
}

func TestOfflineQueueBounded(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxQueuedMessages = 5 })
	persist := func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 60
		p.Props.Set(codec.PropSessionExpiry)
	}
	rc := dialRaw(t, s, codec.V5)
	rc.connect("q", persist)
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("q"), QoS: 1}}})
	rc.expect()
	rc.send(&codec.Disconnect{})
	rc.expectClosed()

	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	for i := range 8 {
		pub.send(&codec.Publish{QoS: 1, PacketID: uint16(i + 1), Topic: []byte("q"), Payload: []byte{byte(i)}})
		pub.expect()
	}
	if d := s.stats.droppedQueueFull.Get(); d != 3 {
		t.Fatalf("dropped %d, want 3", d)
	}
	rc = dialRaw(t, s, codec.V5)
	rc.connect("q", persist)
	// The oldest three went; the newest five arrive in order.
	for want := byte(3); want < 8; want++ {
		p := rc.expect().(*codec.Publish)
		if p.Payload[0] != want {
			t.Fatalf("got message %d, want %d", p.Payload[0], want)
		}
		rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("extra %v", got)
	}
}

// The broker never has more unacknowledged QoS 1/2 messages out than the
// client's receive maximum [MQTT-3.3.4-7]; the rest wait and follow as
// acknowledgements come back.
func TestInflightWindowIsReceiveMaximum(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	rc.connect("win", func(p *codec.Connect) {
		p.Props.ReceiveMaximum = 3
		p.Props.Set(codec.PropReceiveMaximum)
	})
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("w"), QoS: 1}}})
	rc.expect()
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	for i := range 10 {
		pub.send(&codec.Publish{QoS: 1, PacketID: uint16(i + 1), Topic: []byte("w"), Payload: []byte{byte(i)}})
		pub.expect()
	}
	next := byte(0)
	for next < 10 {
		// A full window arrives, then nothing more until acknowledgements.
		var window []*codec.Publish
		for len(window) < min(3, 10-int(next)) {
			window = append(window, rc.expect().(*codec.Publish))
		}
		if got := rc.ping(); len(got) != 0 {
			t.Fatalf("%d messages beyond a window of 3", len(got))
		}
		for _, p := range window {
			if p.Payload[0] != next {
				t.Fatalf("got %d, want %d", p.Payload[0], next)
			}
			next++
			rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		}
	}
}

// Our own receive maximum: a client with more unacknowledged QoS 2
// publishes than we allow is disconnected with 0x93 [MQTT-3.3.4-9].
func TestReceiveMaximumExceeded(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.ReceiveMaximum = 2 })
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("greedy", nil)
	if ca.Props.ReceiveMaximum != 2 {
		t.Fatalf("announced %d", ca.Props.ReceiveMaximum)
	}
	for i := 1; i <= 3; i++ {
		rc.send(&codec.Publish{QoS: 2, PacketID: uint16(i), Topic: []byte("rm"), Payload: []byte("x")})
	}
	got := rc.expectClosed()
	if len(got) != 3 || got[2].(*codec.Disconnect).Code != codec.ReceiveMaximumExceeded {
		t.Fatalf("got %v, want PUBREC, PUBREC, DISCONNECT 0x93", got)
	}
}

// slowBroker has a small high-water mark and a reader that never reads.
func TestSlowReceiver(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.OutboundHighWater = 64 << 10
		c.SlowTimeout = 500 * time.Millisecond
	})
	slow := sub(t, s, codec.V5, "slow", codec.Subscription{Filter: []byte("flood/#"), QoS: 1})
	fast := sub(t, s, codec.V5, "fast", codec.Subscription{Filter: []byte("flood/#")})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	payload := make([]byte, 16<<10)
	// Fill the slow reader's socket buffers and its outbound buffer with
	// QoS 0 until the broker counts drops; the fast reader keeps up.
	sent := 0
	fastGot := 0
	for s.stats.droppedSlow.Get() == 0 {
		if sent > 20000 {
			t.Fatal("no QoS 0 drops after 20000 messages to a reader that never reads")
		}
		pub.send(&codec.Publish{Topic: []byte("flood/0"), Payload: payload})
		sent++
		fast.expect()
		fastGot++
	}
	// The publisher and the other subscriber were never held up: the fast
	// reader got everything, in step with the publisher.
	if fastGot != sent {
		t.Fatalf("fast subscriber got %d of %d", fastGot, sent)
	}
	// QoS 1 to the slow reader waits in its session instead.
	pub.send(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("flood/1"), Payload: []byte("q1")})
	pub.expect()
	// Above the mark for longer than SlowTimeout: closed.
	waitFor(t, "slow reader to be closed", func() bool { return s.stats.slowClosed.Get() == 1 })
	_ = slow
}

// A filter listed several times in one SUBSCRIBE is one subscription with
// its last listing's options, and every listing gets the code it would
// have got alone; a SUBSCRIBE of as many copies of # as --max-subscriptions
// makes one subscription.
func TestSubscribeRepeatedFilter(t *testing.T) {
	s := startBroker(t, nil)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("a", "kept", 1, true)

	sub := dialRaw(t, s, codec.V5)
	sub.connect("sub", nil)
	sub.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{
		{Filter: []byte("a"), QoS: 0}, {Filter: []byte("b"), QoS: 1}, {Filter: []byte("a"), QoS: 2}, {Filter: []byte("a"), QoS: 1}}})
	sa, ok := sub.expect().(*codec.Suback)
	if !ok || !slices.Equal(sa.Codes, []codec.ReasonCode{0, 1, 2, 1}) {
		t.Fatalf("SUBACK %+v, want each listing's QoS granted", sa)
	}
	got := sub.ping()
	if len(got) != 1 || got[0].(*codec.Publish).QoS != 1 {
		t.Fatalf("retained on subscribe: %+v, want a's message once at QoS 1", got)
	}
	sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: got[0].(*codec.Publish).PacketID})

	bomb := make([]codec.Subscription, s.cfg.MaxSubscriptions)
	for i := range bomb {
		bomb[i] = codec.Subscription{Filter: []byte("#")}
	}
	sub.send(&codec.Subscribe{PacketID: 2, Subs: bomb})
	sa, ok = sub.expect().(*codec.Suback)
	if !ok || len(sa.Codes) != len(bomb) || sa.Codes[0] != 0 || sa.Codes[len(bomb)-1] != 0 {
		t.Fatalf("SUBACK of %d codes for %d copies of #", len(sa.Codes), len(bomb))
	}
	if len(bomb) < 1000 {
		t.Fatalf("only %d copies: --max-subscriptions defaults to %d", len(bomb), s.cfg.MaxSubscriptions)
	}
	if n := heldSubscriptions(s, "sub"); n != 3 {
		t.Fatalf("session holds %d subscriptions, want a, b and #", n)
	}
}

// A SUBSCRIBE that lists more filters than --max-subscriptions, copies of
// one filter included, ends the connection (MQTT 5: DISCONNECT 0x97; MQTT
// 3: a close) without a subscription or a SUBACK, and is counted; another
// client on the same loops keeps its service.
func TestSubscribeListingTooManyFilters(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxSubscriptions = 10 })
	other := dialRaw(t, s, codec.V311)
	other.connect("other", nil)
	if got := subscribeCodes(other, "ok/#"); !slices.Equal(got, []codec.ReasonCode{codec.GrantedQoS1}) {
		t.Fatalf("other's SUBACK %v", got)
	}
	for i, v := range []codec.Version{codec.V5, codec.V311} {
		bomb := dialRaw(t, s, v)
		bomb.connect("bomb-"+v.String(), nil)
		subs := make([]codec.Subscription, 11)
		for i := range subs {
			subs[i] = codec.Subscription{Filter: []byte("#")}
		}
		bomb.send(&codec.Subscribe{PacketID: 1, Subs: subs})
		pkts := bomb.expectClosed()
		if v == codec.V5 && (len(pkts) != 1 || pkts[0].(*codec.Disconnect).Code != codec.QuotaExceeded) {
			t.Fatalf("MQTT 5: got %v, want DISCONNECT 0x97", pkts)
		}
		if v == codec.V311 && len(pkts) != 0 {
			t.Fatalf("MQTT 3: got %v, want a close", pkts)
		}
		if n := s.adm.subLongRefused.Get(); n != uint64(i+1) {
			t.Fatalf("refusals counted: %d, want %d", n, i+1)
		}
		if n := heldSubscriptions(s, "bomb-"+v.String()); n != 0 {
			t.Fatalf("%s: session holds %d subscriptions after the refused SUBSCRIBE", v, n)
		}
	}
	other.publishAcked("ok/1", "still here", 0, false)
	got := other.ping()
	if len(got) != 1 || string(got[0].(*codec.Publish).Payload) != "still here" {
		t.Fatalf("other client after the refusals: %v", got)
	}
}

// heldSubscriptions is how many subscriptions the session of client id
// holds; 0 without a session.
func heldSubscriptions(s *Server, id string) int {
	ss := s.lookupSession(id)
	if ss == nil {
		return 0
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.mu.subs)
}
