package server

import (
	"strconv"
	"strings"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

// offlineSubscriber leaves a persistent v5 session id, subscribed to
// filter at QoS 1, offline.
func offlineSubscriber(t *testing.T, s *Server, id, filter string) {
	t.Helper()
	rc, _ := connectPersistent(t, s, id, true)
	rc.subscribe(filter, 1)
	rc.send(&codec.Disconnect{})
	rc.expectClosed()
}

// drainQueued reconnects session id and returns the payloads of the
// messages it had queued, acknowledging each.
func drainQueued(t *testing.T, s *Server, id string) []string {
	t.Helper()
	rc, _ := connectPersistent(t, s, id, false)
	var got []string
	for _, p := range rc.ping() {
		if m, ok := p.(*codec.Publish); ok {
			got = append(got, string(m.Payload))
			rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: m.PacketID})
		}
	}
	rc.ping()
	return got
}

// --max-queued-bytes bounds a session's queue in bytes: the oldest go,
// counted; what is queued is accounted exactly and given back when
// delivered.
func TestMaxQueuedBytes(t *testing.T) {
	payload := strings.Repeat("p", 200)
	per := int64(len("q/a")+len(payload)+2) + queuedOverhead // payloads carry a 2-byte number
	s := startBroker(t, func(c *Config) {
		c.MaxQueuedBytes = 3*per + per/2 // room for 3
		c.MaxQueuedBytesTotal = 0
	})
	offlineSubscriber(t, s, "a", "q/a")
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	for i := range 20 {
		pub.publishAcked("q/a", payload+strconv.Itoa(i%10)+strconv.Itoa(i/10), 1, false)
	}
	if got, want := s.queuedBytes.Load(), 3*per; got != want {
		t.Fatalf("queued bytes %d, want %d (3 messages)", got, want)
	}
	if n := s.stats.droppedQueueFull.Get(); n != 17 {
		t.Fatalf("dropped for a full queue: %d, want 17", n)
	}
	got := drainQueued(t, s, "a")
	if len(got) != 3 || got[2] != payload+"91" {
		t.Fatalf("delivered %d messages ending %q, want the newest 3", len(got), got[len(got)-1])
	}
	if n := s.queuedBytes.Load(); n != 0 {
		t.Fatalf("queued bytes %d after the queue drained, want 0", n)
	}
}

// --max-queued-bytes-total bounds the node's queues together: with
// drop-oldest the receiving session's oldest make room; with refuse QoS
// 1/2 publishes get 0x97 while the budget is spent.
func TestMaxQueuedBytesTotal(t *testing.T) {
	payload := strings.Repeat("p", 200)
	per := int64(len("q/a")+len(payload)) + queuedOverhead
	for _, policy := range []QueueFullPolicy{QueueFullDropOldest, QueueFullRefuse} {
		t.Run(string(policy), func(t *testing.T) {
			s := startBroker(t, func(c *Config) {
				c.MaxQueuedBytesTotal = 5 * per
				c.QueueFullPolicy = policy
			})
			offlineSubscriber(t, s, "a", "q/a")
			offlineSubscriber(t, s, "b", "q/b")
			pub := dialRaw(t, s, codec.V5)
			pub.connect("pub", nil)
			for range 4 {
				pub.publishAcked("q/a", payload, 1, false)
			}
			refused := 0
			for range 4 {
				id := pub.nextID()
				pub.send(&codec.Publish{Topic: []byte("q/b"), Payload: []byte(payload), QoS: 1, PacketID: id})
				a := pub.expect().(*codec.Ack)
				if a.Code == codec.QuotaExceeded {
					refused++
				} else if a.Code != codec.Success {
					t.Fatalf("PUBACK %v", a.Code)
				}
				if q := s.queuedBytes.Load(); q > 5*per {
					t.Fatalf("queued bytes %d over the budget %d", q, 5*per)
				}
			}
			a, b := drainQueued(t, s, "a"), drainQueued(t, s, "b")
			switch policy {
			case QueueFullDropOldest:
				// b had nothing to give up: it keeps one, then its own
				// oldest make room for its newest.
				if refused != 0 || len(a) != 4 || len(b) != 1 || s.stats.droppedBudget.Get() != 3 {
					t.Fatalf("refused %d, a got %d, b got %d, dropped %d; want 0, 4, 1, 3",
						refused, len(a), len(b), s.stats.droppedBudget.Get())
				}
			case QueueFullRefuse:
				if refused != 3 || len(a) != 4 || len(b) != 1 || s.stats.refusedBudget.Get() != 3 {
					t.Fatalf("refused %d, a got %d, b got %d, counted %d; want 3, 4, 1, 3",
						refused, len(a), len(b), s.stats.refusedBudget.Get())
				}
			}
			if n := s.queuedBytes.Load(); n != 0 {
				t.Fatalf("queued bytes %d after the queues drained, want 0", n)
			}
		})
	}
}

// --max-sessions refuses a new persistent session once the broker holds
// that many; clean sessions and a session resumed still connect.
func TestMaxSessions(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxSessions = 2 })
	offlineSubscriber(t, s, "a", "t")
	offlineSubscriber(t, s, "b", "t")
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("c", func(p *codec.Connect) {
		p.Props.SessionExpiry = 60
		p.Props.Set(codec.PropSessionExpiry)
	})
	if ca.Code != codec.QuotaExceeded {
		t.Fatalf("a third persistent session: CONNACK %v, want 0x97", ca.Code)
	}
	v3 := dialRaw(t, s, codec.V311)
	if ca := v3.connect("d", func(p *codec.Connect) { p.CleanStart = false }); ca.Code != codec.V3ServerUnavailable {
		t.Fatalf("MQTT 3 persistent session: CONNACK %v, want 3", ca.Code)
	}
	if n := s.stats.sessionsRefused.Get(); n != 2 {
		t.Fatalf("refusals counted %d, want 2", n)
	}
	if ca := dialRaw(t, s, codec.V5).connect("clean", nil); ca.Code != codec.Success {
		t.Fatalf("a clean session: CONNACK %v", ca.Code)
	}
	if _, ca := connectPersistent(t, s, "a", false); ca.Code != codec.Success || !ca.SessionPresent {
		t.Fatalf("resuming a: CONNACK %v, present %v", ca.Code, ca.SessionPresent)
	}
}

// --max-retained and --max-retained-bytes: a message past them is
// delivered and acknowledged but not retained; replacing and clearing
// still work.
func TestRetainedLimits(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.MaxRetained = 2
		c.MaxRetainedBytes = 100
	})
	live := dialRaw(t, s, codec.V5)
	live.connect("live", nil)
	live.subscribe("r/#", 0)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.publishAcked("r/a", "1", 1, true)
	pub.publishAcked("r/b", "2", 1, true)
	pub.publishAcked("r/c", "3", 1, true)                      // a third topic
	pub.publishAcked("r/a", strings.Repeat("x", 200), 1, true) // past the bytes
	pub.publishAcked("r/b", "22", 1, true)                     // a replacement
	// Published in order from one client: the live subscriber gets all
	// five in that order.
	var seen []string
	for range 5 {
		m, ok := live.expect().(*codec.Publish)
		if !ok {
			t.Fatalf("the live subscriber got %v", m)
		}
		seen = append(seen, string(m.Topic))
	}
	if strings.Join(seen, " ") != "r/a r/b r/c r/a r/b" {
		t.Fatalf("the live subscriber got %v, want all five", seen)
	}
	late := dialRaw(t, s, codec.V5)
	late.connect("late", nil)
	late.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("r/#")}}})
	late.expect()
	got := map[string]string{}
	for _, p := range late.ping() {
		if m, ok := p.(*codec.Publish); ok {
			got[string(m.Topic)] = string(m.Payload)
		}
	}
	if len(got) != 2 || got["r/a"] != "1" || got["r/b"] != "22" {
		t.Fatalf("retained %v, want r/a=1 and r/b=22", got)
	}
	if c, b := s.stats.retainedRefused["max_retained"].Get(), s.stats.retainedRefused["max_retained_bytes"].Get(); c != 1 || b != 1 {
		t.Fatalf("refusals counted: %d for the count, %d for the bytes; want 1 and 1", c, b)
	}
}

// A node that is not in a cluster keeps no tombstones for cleared retained
// messages: nothing would ever collect them.
func TestSingleNodeKeepsNoTombstones(t *testing.T) {
	s := startBroker(t, nil)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	for i := range 100 {
		topic := "gone/" + strconv.Itoa(i)
		pub.publishAcked(topic, "x", 1, true)
		pub.publishAcked(topic, "", 1, true)
	}
	_, tombs := s.retained.snapshot()
	if len(tombs) != 0 || s.retained.len() != 0 {
		t.Fatalf("%d tombstones and %d retained messages after clearing every topic, want none", len(tombs), s.retained.len())
	}
}
