package server

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/gannetmq/gannet/codec"
)

// sub connects a raw v5 (or 3.x) client and subscribes it to filters.
func sub(t *testing.T, s *Server, v codec.Version, id string, subs ...codec.Subscription) *rawConn {
	t.Helper()
	rc := dialRaw(t, s, v)
	rc.connect(id, nil)
	rc.send(&codec.Subscribe{PacketID: rc.nextID(), Subs: subs})
	if _, ok := rc.expect().(*codec.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	return rc
}

func TestPublishQoSLevels(t *testing.T) {
	s := startBroker(t, nil)
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		subr := sub(t, s, v, "sub"+v.String(), codec.Subscription{Filter: []byte("q/" + v.String() + "/#"), QoS: 2})
		pub := dialRaw(t, s, v)
		pub.connect("pub"+v.String(), nil)
		for qos := byte(0); qos <= 2; qos++ {
			topic := []byte("q/" + v.String() + "/" + string('0'+qos))
			pub.send(&codec.Publish{QoS: qos, PacketID: uint16(qos) * 100, Topic: topic, Payload: []byte{qos}})
			switch qos {
			case 1:
				if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBACK || a.PacketID != 100 {
					t.Fatalf("%v: got %+v, want PUBACK 100", v, a)
				}
			case 2:
				if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBREC || a.PacketID != 200 {
					t.Fatalf("%v: got %+v, want PUBREC 200", v, a)
				}
				pub.send(&codec.Ack{Kind: codec.PUBREL, PacketID: 200})
				if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBCOMP || a.PacketID != 200 {
					t.Fatalf("%v: got %+v, want PUBCOMP 200", v, a)
				}
			}
			p := subr.expect().(*codec.Publish)
			if p.QoS != qos || !bytes.Equal(p.Topic, topic) || p.Dup {
				t.Fatalf("%v: delivered %+v", v, p)
			}
			if qos > 0 && p.PacketID == 0 {
				t.Fatalf("%v: QoS %d without packet id", v, qos)
			}
			switch qos {
			case 1:
				subr.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
			case 2:
				subr.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
				if a := subr.expect().(*codec.Ack); a.Kind != codec.PUBREL || a.PacketID != p.PacketID {
					t.Fatalf("%v: got %+v, want PUBREL", v, a)
				}
				subr.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: p.PacketID})
			}
		}
		if got := subr.ping(); len(got) != 0 {
			t.Fatalf("%v: extra packets %v", v, got)
		}
	}
}

// QoS is downgraded to the subscription's maximum [MQTT-3.8.4-8].
func TestQoSDowngrade(t *testing.T) {
	s := startBroker(t, nil)
	subr := sub(t, s, codec.V5, "s", codec.Subscription{Filter: []byte("d"), QoS: 1})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{QoS: 2, PacketID: 1, Topic: []byte("d"), Payload: []byte("x")})
	pub.expect()
	if p := subr.expect().(*codec.Publish); p.QoS != 1 {
		t.Fatalf("QoS %d, want 1", p.QoS)
	}
}

// A retransmitted QoS 2 PUBLISH (DUP) before PUBREL is delivered once, and
// the PUBREC/PUBREL state outlives a reconnect.
func TestQoS2ExactlyOnceAcrossReconnect(t *testing.T) {
	s := startBroker(t, nil)
	subr := sub(t, s, codec.V5, "s", codec.Subscription{Filter: []byte("x2"), QoS: 2})
	persist := func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 60
		p.Props.Set(codec.PropSessionExpiry)
	}
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub2", persist)
	pub.send(&codec.Publish{QoS: 2, PacketID: 9, Topic: []byte("x2"), Payload: []byte("once")})
	if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBREC {
		t.Fatalf("got %+v", a)
	}
	_ = pub.c.Close() // lose the connection before PUBREL

	pub = dialRaw(t, s, codec.V5)
	if ca := pub.connect("pub2", persist); !ca.SessionPresent {
		t.Fatal("session lost")
	}
	pub.send(&codec.Publish{Dup: true, QoS: 2, PacketID: 9, Topic: []byte("x2"), Payload: []byte("once")})
	if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBREC || a.PacketID != 9 {
		t.Fatalf("got %+v", a)
	}
	pub.send(&codec.Ack{Kind: codec.PUBREL, PacketID: 9})
	if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBCOMP || a.Code != codec.Success {
		t.Fatalf("got %+v", a)
	}
	if p := subr.expect().(*codec.Publish); string(p.Payload) != "once" {
		t.Fatalf("got %q", p.Payload)
	}
	subr.send(&codec.Ack{Kind: codec.PUBREC, PacketID: 1})
	subr.expect()
	if got := subr.ping(); len(got) != 0 {
		t.Fatalf("delivered more than once: %v", got)
	}
}

// Outbound QoS 1 and 2 not acknowledged are sent again, with DUP, when the
// session reconnects [MQTT-4.4.0-1]; a PUBREL is resent as PUBREL.
func TestInflightRedelivery(t *testing.T) {
	s := startBroker(t, nil)
	persist := func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 60
		p.Props.Set(codec.PropSessionExpiry)
	}
	rc := dialRaw(t, s, codec.V5)
	rc.connect("r", persist)
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("r/#"), QoS: 2}}})
	rc.expect()
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("r/1"), Payload: []byte("one")})
	pub.expect()
	pub.send(&codec.Publish{QoS: 2, PacketID: 2, Topic: []byte("r/2"), Payload: []byte("two")})
	pub.expect()
	p1 := rc.expect().(*codec.Publish)
	p2 := rc.expect().(*codec.Publish)
	rc.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p2.PacketID}) // QoS 2 now awaits PUBCOMP
	if a := rc.expect().(*codec.Ack); a.Kind != codec.PUBREL {
		t.Fatalf("got %+v", a)
	}
	_ = rc.c.Close()

	rc = dialRaw(t, s, codec.V5)
	rc.connect("r", persist)
	again := rc.expect().(*codec.Publish)
	if !again.Dup || again.PacketID != p1.PacketID || string(again.Payload) != "one" {
		t.Fatalf("redelivered %+v", again)
	}
	if a := rc.expect().(*codec.Ack); a.Kind != codec.PUBREL || a.PacketID != p2.PacketID {
		t.Fatalf("got %+v, want PUBREL %d", a, p2.PacketID)
	}
}

func TestRetained(t *testing.T) {
	s := startBroker(t, nil)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{Retain: true, Topic: []byte("ret/a"), Payload: []byte("A")})
	pub.send(&codec.Publish{Retain: true, QoS: 1, PacketID: 1, Topic: []byte("ret/b"), Payload: []byte("B")})
	pub.expect()

	// A new subscriber gets the retained messages with the retain flag
	// [MQTT-3.3.1-6].
	s1 := sub(t, s, codec.V5, "s1", codec.Subscription{Filter: []byte("ret/+"), QoS: 1})
	got := map[string]bool{}
	for range 2 {
		p := s1.expect().(*codec.Publish)
		if !p.Retain {
			t.Fatalf("retained message without retain flag: %+v", p)
		}
		if p.QoS > 0 {
			s1.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		}
		got[string(p.Payload)] = true
	}
	if !got["A"] || !got["B"] {
		t.Fatalf("got %v", got)
	}
	// Live messages to an existing subscriber go without the retain flag
	// unless retain-as-published [MQTT-3.3.1-9, MQTT-3.3.1-12].
	pub.send(&codec.Publish{Retain: true, Topic: []byte("ret/a"), Payload: []byte("A2")})
	if p := s1.expect().(*codec.Publish); p.Retain || string(p.Payload) != "A2" {
		t.Fatalf("live %+v", p)
	}
	// An empty payload clears [MQTT-3.3.1-10].
	pub.send(&codec.Publish{Retain: true, Topic: []byte("ret/a")})
	s1.expect()
	s2 := sub(t, s, codec.V5, "s2", codec.Subscription{Filter: []byte("ret/#")})
	if got := s2.ping(); len(got) != 1 || string(got[0].(*codec.Publish).Payload) != "B" {
		t.Fatalf("after clearing: %v", got)
	}
	// 3.1.1 subscribers get them too.
	s3 := sub(t, s, codec.V311, "s3", codec.Subscription{Filter: []byte("ret/b")})
	if p := s3.expect().(*codec.Publish); !p.Retain || string(p.Payload) != "B" {
		t.Fatalf("3.1.1 %+v", p)
	}
}

func TestRetainHandling(t *testing.T) {
	s := startBroker(t, nil)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{Retain: true, QoS: 1, PacketID: 1, Topic: []byte("rh"), Payload: []byte("R")})
	pub.expect()

	count := func(rc *rawConn) int { return len(rc.ping()) }
	rc := dialRaw(t, s, codec.V5)
	rc.connect("rh", nil)
	subscribe := func(rh byte) {
		rc.send(&codec.Subscribe{PacketID: rc.nextID(), Subs: []codec.Subscription{{Filter: []byte("rh"), RetainHandling: rh}}})
		rc.expect()
	}
	// 0: on every subscribe [MQTT-3.3.1-9].
	subscribe(0)
	subscribe(0)
	if n := count(rc); n != 2 {
		t.Fatalf("retain handling 0: %d messages, want 2", n)
	}
	// 1: only when the subscription is new [MQTT-3.3.1-10].
	subscribe(1)
	if n := count(rc); n != 0 {
		t.Fatalf("retain handling 1, existing subscription: %d messages", n)
	}
	rc.send(&codec.Unsubscribe{PacketID: rc.nextID(), Filters: [][]byte{[]byte("rh")}})
	rc.expect()
	subscribe(1)
	if n := count(rc); n != 1 {
		t.Fatalf("retain handling 1, new subscription: %d messages", n)
	}
	// 2: never [MQTT-3.3.1-11].
	rc.send(&codec.Unsubscribe{PacketID: rc.nextID(), Filters: [][]byte{[]byte("rh")}})
	rc.expect()
	subscribe(2)
	if n := count(rc); n != 0 {
		t.Fatalf("retain handling 2: %d messages", n)
	}
}

func TestRetainAsPublished(t *testing.T) {
	s := startBroker(t, nil)
	rap := sub(t, s, codec.V5, "rap", codec.Subscription{Filter: []byte("rap"), RetainAsPublished: true})
	plain := sub(t, s, codec.V5, "plain", codec.Subscription{Filter: []byte("rap")})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{Retain: true, Topic: []byte("rap"), Payload: []byte("x")})
	if p := rap.expect().(*codec.Publish); !p.Retain {
		t.Error("retain-as-published subscriber got retain 0")
	}
	if p := plain.expect().(*codec.Publish); p.Retain {
		t.Error("plain subscriber got retain 1")
	}
}

func TestWill(t *testing.T) {
	s := startBroker(t, nil)
	watcher := sub(t, s, codec.V5, "w", codec.Subscription{Filter: []byte("will/#"), QoS: 1})
	withWill := func(topic string, delay uint32) func(*codec.Connect) {
		return func(p *codec.Connect) {
			p.WillFlag, p.WillQoS, p.WillTopic, p.WillPayload = true, 1, []byte(topic), []byte("bye")
			p.WillProps.ContentType = []byte("text/plain")
			p.WillProps.Set(codec.PropContentType)
			p.WillProps.User = []codec.UserProperty{{Key: []byte("who"), Value: []byte(topic)}}
			if delay > 0 {
				p.WillProps.WillDelay = delay
				p.WillProps.Set(codec.PropWillDelay)
				p.Props.SessionExpiry = 60
				p.Props.Set(codec.PropSessionExpiry)
			}
		}
	}
	// A normal DISCONNECT discards the will [MQTT-3.1.2-10].
	rc := dialRaw(t, s, codec.V5)
	rc.connect("normal", withWill("will/normal", 0))
	rc.send(&codec.Disconnect{})
	rc.expectClosed()
	if got := watcher.ping(); len(got) != 0 {
		t.Fatalf("will sent after a normal disconnect: %v", got)
	}
	// DISCONNECT 0x04 asks for it.
	rc = dialRaw(t, s, codec.V5)
	rc.connect("askwill", withWill("will/ask", 0))
	rc.send(&codec.Disconnect{Code: codec.DisconnectWithWill})
	rc.expectClosed()
	if p := watcher.expect().(*codec.Publish); string(p.Topic) != "will/ask" {
		t.Fatalf("got %q", p.Topic)
	}
	watcher.send(&codec.Ack{Kind: codec.PUBACK, PacketID: 1})

	// A network error sends it, with its properties [MQTT-3.1.2-8].
	rc = dialRaw(t, s, codec.V5)
	rc.connect("neterr", withWill("will/net", 0))
	_ = rc.c.Close()
	p := watcher.expect().(*codec.Publish)
	if string(p.Topic) != "will/net" || string(p.Payload) != "bye" || p.QoS != 1 ||
		string(p.Props.ContentType) != "text/plain" || len(p.Props.User) != 1 || string(p.Props.User[0].Value) != "will/net" {
		t.Fatalf("will %+v", p)
	}
	watcher.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})

	// Will delay: not before the delay; cancelled when the client returns
	// in time [MQTT-3.1.3-9].
	rc = dialRaw(t, s, codec.V5)
	rc.connect("delayed", withWill("will/delayed", 1))
	start := time.Now()
	_ = rc.c.Close()
	p = watcher.expect().(*codec.Publish)
	if string(p.Topic) != "will/delayed" || time.Since(start) < 900*time.Millisecond {
		t.Fatalf("delayed will %q after %v", p.Topic, time.Since(start))
	}
	watcher.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})

	rc = dialRaw(t, s, codec.V5)
	rc.connect("back", withWill("will/back", 2))
	_ = rc.c.Close()
	rc = dialRaw(t, s, codec.V5)
	rc.connect("back", func(p *codec.Connect) { p.CleanStart = false })
	// Wait past the delay: the will must not come.
	waitFor(t, "will delay to pass", func() bool { return time.Since(start) > 3500*time.Millisecond })
	if got := watcher.ping(); len(got) != 0 {
		t.Fatalf("will sent although the client came back: %v", got)
	}
}

// 3.1.1 clients through paho.mqtt.golang: will on network error.
func TestWillV3(t *testing.T) {
	s := startBroker(t, nil)
	got := make(chan paho3.Message, 1)
	w := dialV3(t, s, "watch3", true, nil)
	wait(t, w.Subscribe("will3", 1, func(_ paho3.Client, m paho3.Message) { got <- m }))
	rc := dialRaw(t, s, codec.V311)
	rc.connect("dying", func(p *codec.Connect) {
		p.WillFlag, p.WillTopic, p.WillPayload = true, []byte("will3"), []byte("rip")
	})
	_ = rc.c.Close()
	select {
	case m := <-got:
		if string(m.Payload()) != "rip" {
			t.Fatalf("payload %q", m.Payload())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no will")
	}
}

func TestMessageExpiry(t *testing.T) {
	s := startBroker(t, nil)
	persist := func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 60
		p.Props.Set(codec.PropSessionExpiry)
	}
	rc := dialRaw(t, s, codec.V5)
	rc.connect("exp", persist)
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("exp/#"), QoS: 1}}})
	rc.expect()
	rc.send(&codec.Disconnect{})
	rc.expectClosed()

	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	send := func(topic string, expiry uint32) {
		p := &codec.Publish{QoS: 1, PacketID: pub.nextID(), Topic: []byte(topic), Payload: []byte(topic)}
		p.Props.MessageExpiry = expiry
		p.Props.Set(codec.PropMessageExpiry)
		pub.send(p)
		pub.expect()
	}
	send("exp/short", 1)
	send("exp/long", 100)
	start := time.Now()
	waitFor(t, "the short message to expire", func() bool { return time.Since(start) > 2100*time.Millisecond })

	rc = dialRaw(t, s, codec.V5)
	rc.connect("exp", persist)
	p := rc.expect().(*codec.Publish)
	if string(p.Topic) != "exp/long" {
		t.Fatalf("expired message delivered: %q", p.Topic)
	}
	// The interval is reduced by the time spent waiting [MQTT-3.3.2-6].
	if !p.Props.Has(codec.PropMessageExpiry) || p.Props.MessageExpiry > 98 || p.Props.MessageExpiry < 90 {
		t.Fatalf("forwarded expiry %d, want about 98", p.Props.MessageExpiry)
	}
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("extra %v", got)
	}
	if s.stats.droppedExpired.Get() != 1 {
		t.Fatalf("expired count %d", s.stats.droppedExpired.Get())
	}
}

func TestTopicAliases(t *testing.T) {
	// One event loop: the publisher and the subscriber share it, the case
	// where the broker assigns outbound aliases (see client.outAlias).
	s := startBroker(t, func(c *Config) { c.TopicAliasMaximum = 5; c.EventLoops = 1 })
	// Outbound: the client allows 2 aliases; the broker sets one on first
	// use and sends the alias alone afterwards.
	rc := dialRaw(t, s, codec.V5)
	rc.connect("alias", func(p *codec.Connect) {
		p.Props.TopicAliasMaximum = 2
		p.Props.Set(codec.PropTopicAliasMaximum)
	})
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("long/topic/#")}}})
	rc.expect()

	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	// Inbound: set alias 3 with the topic, then use it with an empty topic.
	first := &codec.Publish{Topic: []byte("long/topic/name"), Payload: []byte("1")}
	first.Props.TopicAlias = 3
	first.Props.Set(codec.PropTopicAlias)
	pub.send(first)
	second := &codec.Publish{Payload: []byte("2")}
	second.Props.TopicAlias = 3
	second.Props.Set(codec.PropTopicAlias)
	pub.send(second)

	a := rc.expect().(*codec.Publish)
	b := rc.expect().(*codec.Publish)
	if string(a.Topic) != "long/topic/name" || !a.Props.Has(codec.PropTopicAlias) {
		t.Fatalf("first %+v", a)
	}
	if len(b.Topic) != 0 || b.Props.TopicAlias != a.Props.TopicAlias || string(b.Payload) != "2" {
		t.Fatalf("second %+v", b)
	}
	if a.Props.TopicAlias < 1 || a.Props.TopicAlias > 2 {
		t.Fatalf("alias %d outside the client's maximum", a.Props.TopicAlias)
	}
	// An alias above the broker's maximum is refused with 0x94 [MQTT-3.3.2-10].
	bad := &codec.Publish{Topic: []byte("x"), Payload: []byte("3")}
	bad.Props.TopicAlias = 6
	bad.Props.Set(codec.PropTopicAlias)
	pub.send(bad)
	got := pub.expectClosed()
	if len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.TopicAliasInvalid {
		t.Fatalf("got %v", got)
	}
}

func TestSubscriptionIdentifiers(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	rc.connect("ids", nil)
	subWithID := func(filter string, id uint32) {
		p := &codec.Subscribe{PacketID: rc.nextID(), Subs: []codec.Subscription{{Filter: []byte(filter), QoS: 1}}}
		p.Props.SubscriptionIDs = []uint32{id}
		rc.send(p)
		rc.expect()
	}
	subWithID("id/+", 7)
	subWithID("id/#", 300)
	rc.send(&codec.Subscribe{PacketID: rc.nextID(), Subs: []codec.Subscription{{Filter: []byte("id/x")}}}) // no id
	rc.expect()
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{Topic: []byte("id/x"), Payload: []byte("x")})
	// Overlapping subscriptions: one delivery, every id [MQTT-3.3.4-3, MQTT-3.3.4-5].
	p := rc.expect().(*codec.Publish)
	if len(p.Props.SubscriptionIDs) != 2 || p.Props.SubscriptionIDs[0] != 7 || p.Props.SubscriptionIDs[1] != 300 {
		t.Fatalf("ids %v", p.Props.SubscriptionIDs)
	}
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("more than one delivery: %v", got)
	}
	// A client may not send a subscription id [MQTT-3.3.4-6].
	bad := &codec.Publish{Topic: []byte("id/y"), Payload: []byte("y")}
	bad.Props.SubscriptionIDs = []uint32{1}
	pub.send(bad)
	if got := pub.expectClosed(); len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.ProtocolError {
		t.Fatalf("got %v", got)
	}
}

func TestOverlapMaxQoS(t *testing.T) {
	s := startBroker(t, nil)
	rc := sub(t, s, codec.V5, "ov", codec.Subscription{Filter: []byte("ov/#"), QoS: 0}, codec.Subscription{Filter: []byte("ov/+"), QoS: 2})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	pub.send(&codec.Publish{QoS: 2, PacketID: 1, Topic: []byte("ov/a"), Payload: []byte("m")})
	pub.expect()
	if p := rc.expect().(*codec.Publish); p.QoS != 2 {
		t.Fatalf("QoS %d, want the maximum 2", p.QoS)
	}
	rc.send(&codec.Ack{Kind: codec.PUBREC, PacketID: 1})
	rc.expect()
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("more than one delivery: %v", got)
	}
}

func TestNoLocal(t *testing.T) {
	s := startBroker(t, nil)
	rc := sub(t, s, codec.V5, "nl", codec.Subscription{Filter: []byte("nl/#"), NoLocal: true})
	other := sub(t, s, codec.V5, "other", codec.Subscription{Filter: []byte("nl/#")})
	rc.send(&codec.Publish{Topic: []byte("nl/1"), Payload: []byte("mine")})
	if p := other.expect().(*codec.Publish); string(p.Payload) != "mine" {
		t.Fatal("other subscriber missed it")
	}
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("no-local subscriber got its own message [MQTT-3.8.3-3]: %v", got)
	}
	other.send(&codec.Publish{Topic: []byte("nl/2"), Payload: []byte("theirs")})
	if p := rc.expect().(*codec.Publish); string(p.Payload) != "theirs" {
		t.Fatal("no-local subscriber missed another client's message")
	}
}

func TestPropertiesPassThrough(t *testing.T) {
	s := startBroker(t, nil)
	rc := sub(t, s, codec.V5, "pt", codec.Subscription{Filter: []byte("pt")})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	in := &codec.Publish{Topic: []byte("pt"), Payload: []byte("héllo")}
	in.Props.ContentType = []byte("text/plain; charset=utf-8")
	in.Props.ResponseTopic = []byte("reply/to/me")
	in.Props.CorrelationData = []byte{1, 2, 3, 0}
	in.Props.PayloadFormat = 1
	in.Props.Set(codec.PropContentType)
	in.Props.Set(codec.PropResponseTopic)
	in.Props.Set(codec.PropCorrelationData)
	in.Props.Set(codec.PropPayloadFormat)
	in.Props.User = []codec.UserProperty{{Key: []byte("a"), Value: []byte("1")}, {Key: []byte("a"), Value: []byte("2")}, {Key: []byte("b"), Value: []byte("")}}
	pub.send(in)
	out := rc.expect().(*codec.Publish)
	// [MQTT-3.3.2-15, MQTT-3.3.2-16, MQTT-3.3.2-17, MQTT-3.3.2-20]
	if !bytes.Equal(out.Props.ContentType, in.Props.ContentType) || !bytes.Equal(out.Props.ResponseTopic, in.Props.ResponseTopic) ||
		!bytes.Equal(out.Props.CorrelationData, in.Props.CorrelationData) || out.Props.PayloadFormat != 1 {
		t.Fatalf("properties changed: %+v", out.Props)
	}
	// User properties in order, duplicates kept [MQTT-3.3.2-18].
	if len(out.Props.User) != 3 || string(out.Props.User[1].Value) != "2" || string(out.Props.User[2].Key) != "b" {
		t.Fatalf("user properties %v", out.Props.User)
	}
}

func TestPayloadFormatValidated(t *testing.T) {
	s := startBroker(t, nil)
	rc := sub(t, s, codec.V5, "pf", codec.Subscription{Filter: []byte("pf")})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("p", nil)
	bad := &codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("pf"), Payload: []byte{0xff, 0xfe}}
	bad.Props.PayloadFormat = 1
	bad.Props.Set(codec.PropPayloadFormat)
	pub.send(bad)
	// QoS 1: refused in the PUBACK with 0x99 [MQTT-3.3.2-4].
	if a := pub.expect().(*codec.Ack); a.Kind != codec.PUBACK || a.Code != codec.PayloadFormatInvalid {
		t.Fatalf("got %+v", a)
	}
	if got := rc.ping(); len(got) != 0 {
		t.Fatalf("invalid payload delivered: %v", got)
	}
	// The same bytes without the indicator are fine.
	pub.send(&codec.Publish{QoS: 1, PacketID: 2, Topic: []byte("pf"), Payload: []byte{0xff, 0xfe}})
	if a := pub.expect().(*codec.Ack); a.Code != codec.Success {
		t.Fatalf("got %+v", a)
	}
	rc.expect()
}

// Outbound aliases follow the topics most recently sent: with more topics
// than the client allows, the least recently used alias is given to the new
// topic, and every PUBLISH resolves to its own topic on the client's side,
// also with publishers on other event loops than the subscriber's.
func TestTopicAliasesMostRecentlyUsed(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.EventLoops = 2 })
	rc := dialRaw(t, s, codec.V5)
	rc.connect("alias-lru", func(p *codec.Connect) {
		p.Props.TopicAliasMaximum = 3
		p.Props.Set(codec.PropTopicAliasMaximum)
	})
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("lru/#"), QoS: 1}}})
	rc.expect()
	var pubs []*rawConn
	for i := range 4 {
		p := dialRaw(t, s, codec.V5)
		p.connect(fmt.Sprintf("alias-pub-%d", i), nil)
		pubs = append(pubs, p)
	}
	// A pattern that reuses recent topics and brings in new ones.
	topics := []string{"lru/a", "lru/b", "lru/a", "lru/c", "lru/d", "lru/a", "lru/b", "lru/e", "lru/e", "lru/a"}
	table := map[uint16]string{} // the client's view
	aliased := 0
	for round := range 20 {
		for i, topic := range topics {
			p := pubs[(round+i)%len(pubs)]
			p.send(&codec.Publish{QoS: 1, PacketID: p.nextID(), Topic: []byte(topic), Payload: []byte(topic)})
			p.expect()
			got := rc.expect().(*codec.Publish)
			rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: got.PacketID})
			name := string(got.Topic)
			if got.Props.Has(codec.PropTopicAlias) {
				a := got.Props.TopicAlias
				if a < 1 || a > 3 {
					t.Fatalf("alias %d outside the client's maximum 3", a)
				}
				if name != "" {
					table[a] = name
				} else {
					name = table[a]
					aliased++
				}
			}
			if name != topic {
				t.Fatalf("round %d, message %d: resolves to %q, sent to %q", round, i, name, topic)
			}
		}
	}
	if aliased == 0 {
		t.Fatal("no message was sent with its alias alone")
	}
	if n := s.stats.aliasedOut.Get(); n != uint64(aliased) {
		t.Fatalf("gannet_messages_sent_aliased_total %d, want %d", n, aliased)
	}
}

// --topic-alias-out 0 sends no aliases.
func TestTopicAliasOutOff(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.TopicAliasOut = 0; c.EventLoops = 1 })
	rc := dialRaw(t, s, codec.V5)
	rc.connect("alias-off", func(p *codec.Connect) {
		p.Props.TopicAliasMaximum = 3
		p.Props.Set(codec.PropTopicAliasMaximum)
	})
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("off/#")}}})
	rc.expect()
	pub := dialRaw(t, s, codec.V5)
	pub.connect("alias-off-pub", nil)
	for range 3 {
		pub.send(&codec.Publish{Topic: []byte("off/t"), Payload: []byte("x")})
		if p := rc.expect().(*codec.Publish); p.Props.Has(codec.PropTopicAlias) || string(p.Topic) != "off/t" {
			t.Fatalf("got %+v, want the topic and no alias", p)
		}
	}
}
