package server

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/gannetmq/gannet/codec"
)

func TestConnackProperties(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.ReceiveMaximum = 77
		c.MaxPacketSize = 4096
		c.TopicAliasMaximum = 9
		c.MaxSessionExpiry = time.Hour
	})
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("props", func(p *codec.Connect) {
		p.Props.SessionExpiry = 0xFFFFFFFF // never, capped by the broker
		p.Props.Set(codec.PropSessionExpiry)
		p.Props.User = []codec.UserProperty{{Key: []byte("k"), Value: []byte("v")}}
		p.Props.RequestProblemInfo = 0
		p.Props.Set(codec.PropRequestProblemInfo)
	})
	if ca.Code != codec.Success {
		t.Fatalf("CONNACK code %v", ca.Code)
	}
	pr := &ca.Props
	if !pr.Has(codec.PropReceiveMaximum) || pr.ReceiveMaximum != 77 {
		t.Errorf("receive maximum %v", pr.ReceiveMaximum)
	}
	if !pr.Has(codec.PropMaximumPacketSize) || pr.MaximumPacketSize != 4096 {
		t.Errorf("maximum packet size %v", pr.MaximumPacketSize)
	}
	if !pr.Has(codec.PropTopicAliasMaximum) || pr.TopicAliasMaximum != 9 {
		t.Errorf("topic alias maximum %v", pr.TopicAliasMaximum)
	}
	// The broker grants less than asked and says so: the session expiry in
	// CONNACK is the one in force.
	if !pr.Has(codec.PropSessionExpiry) || pr.SessionExpiry != 3600 {
		t.Errorf("session expiry %v (present %v)", pr.SessionExpiry, pr.Has(codec.PropSessionExpiry))
	}
	if pr.Has(codec.PropAssignedClientID) {
		t.Error("assigned a client id to a client that had one")
	}
}

func TestAssignedClientID(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("", nil)
	if ca.Code != codec.Success || !ca.Props.Has(codec.PropAssignedClientID) || len(ca.Props.AssignedClientID) == 0 {
		t.Fatalf("CONNACK %+v", ca)
	}
	// 3.1.1: an empty id is accepted with clean session [MQTT-3.1.3-7]...
	r3 := dialRaw(t, s, codec.V311)
	if ca := r3.connect("", nil); ca.Code != codec.V3Accepted {
		t.Fatalf("3.1.1 empty id, clean session: %v", ca.Code)
	}
	// ...and refused with 0x02 without it [MQTT-3.1.3-8].
	r3 = dialRaw(t, s, codec.V311)
	ca = r3.connect("", func(p *codec.Connect) { p.CleanStart = false })
	if ca.Code != codec.V3IdentifierRejected {
		t.Fatalf("3.1.1 empty id, persistent session: %v", ca.Code)
	}
	r3.expectClosed()
}

func TestAuthMethodRefused(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("auth", func(p *codec.Connect) {
		p.Props.AuthMethod = []byte("SCRAM-SHA-256")
		p.Props.Set(codec.PropAuthMethod)
	})
	if ca.Code != codec.BadAuthenticationMethod {
		t.Fatalf("CONNACK code %v, want bad authentication method", ca.Code)
	}
	rc.expectClosed()
}

func TestUnsupportedProtocolVersion(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V311)
	// Level 6 does not exist: the 3.1.1 return code 0x01 [MQTT-3.1.2-2].
	rc.write([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 6, 2, 0, 30, 0, 0})
	got := rc.expectClosed()
	if len(got) != 1 || got[0].(*codec.Connack).Code != codec.V3UnacceptableProtocolVersion {
		t.Fatalf("got %v", got)
	}
}

func TestKeepAliveEnforced(t *testing.T) {
	s := startBroker(t, nil)
	watcher := dialRaw(t, s, codec.V5)
	watcher.connect("watcher", nil)
	watcher.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("will/#")}}})
	watcher.expect()

	rc := dialRaw(t, s, codec.V5)
	start := time.Now()
	rc.connect("sleepy", func(p *codec.Connect) {
		p.KeepAlive = 1
		p.WillFlag, p.WillTopic, p.WillPayload = true, []byte("will/sleepy"), []byte("gone")
	})
	got := rc.expectClosed() // without sending anything
	el := time.Since(start)
	if len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.KeepAliveTimeout {
		t.Fatalf("got %v, want DISCONNECT keep alive timeout", got)
	}
	// 1.5 times the keepalive [MQTT-3.1.2-22]: not before 1.5 s.
	if el < 1400*time.Millisecond {
		t.Fatalf("closed after %v, before 1.5 x keepalive", el)
	}
	// A keepalive timeout sends the will [MQTT-3.1.2-8].
	p := watcher.expect().(*codec.Publish)
	if string(p.Topic) != "will/sleepy" || string(p.Payload) != "gone" {
		t.Fatalf("will %q %q", p.Topic, p.Payload)
	}
}

func TestServerKeepAlive(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.ServerKeepAlive = 7 * time.Second })
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("ka", func(p *codec.Connect) { p.KeepAlive = 600 })
	if !ca.Props.Has(codec.PropServerKeepAlive) || ca.Props.ServerKeepAlive != 7 {
		t.Fatalf("server keepalive %v", ca.Props.ServerKeepAlive)
	}

	s2 := startBroker(t, func(c *Config) { c.MaxKeepAlive = 60 * time.Second })
	rc = dialRaw(t, s2, codec.V5)
	if ca := rc.connect("ka0", func(p *codec.Connect) { p.KeepAlive = 0 }); ca.Props.ServerKeepAlive != 60 {
		t.Fatalf("keepalive 0 under a 60s maximum: server keepalive %v", ca.Props.ServerKeepAlive)
	}
	rc = dialRaw(t, s2, codec.V5)
	if ca := rc.connect("ka30", func(p *codec.Connect) { p.KeepAlive = 30 }); ca.Props.Has(codec.PropServerKeepAlive) {
		t.Fatalf("keepalive within bounds overridden: %v", ca.Props.ServerKeepAlive)
	}
}

func TestTakeover(t *testing.T) {
	s := startBroker(t, nil)
	old := dialRaw(t, s, codec.V5)
	old.connect("dup", func(p *codec.Connect) {
		p.CleanStart = false
		p.Props.SessionExpiry = 60
		p.Props.Set(codec.PropSessionExpiry)
		p.WillFlag, p.WillTopic, p.WillPayload = true, []byte("will/dup"), []byte("x")
	})
	old.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("t/dup"), QoS: 1}}})
	old.expect()

	watcher := dialRaw(t, s, codec.V5)
	watcher.connect("watcher", nil)
	watcher.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("will/#")}}})
	watcher.expect()

	nu := dialRaw(t, s, codec.V5)
	ca := nu.connect("dup", func(p *codec.Connect) { p.CleanStart = false })
	if !ca.SessionPresent {
		t.Fatal("takeover lost the session")
	}
	got := old.expectClosed()
	if len(got) != 1 || got[0].(*codec.Disconnect).Code != codec.SessionTakenOver {
		t.Fatalf("old connection got %v, want DISCONNECT 0x8E", got)
	}
	// The subscription moved with the session.
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.send(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("t/dup"), Payload: []byte("hi")})
	pub.expect()
	p := nu.expect().(*codec.Publish)
	if string(p.Payload) != "hi" {
		t.Fatalf("payload %q", p.Payload)
	}
	// A takeover is not a network failure: the will (session continues)
	// is not published.
	if got := watcher.ping(); len(got) != 0 {
		t.Fatalf("watcher got %v", got)
	}
}

func TestCleanStartAndSessionPresent(t *testing.T) {
	s := startBroker(t, nil)
	// v5: persistent session via session expiry.
	rc := dialRaw(t, s, codec.V5)
	ca := rc.connect("persist", func(p *codec.Connect) {
		p.Props.SessionExpiry = 300
		p.Props.Set(codec.PropSessionExpiry)
	})
	if ca.SessionPresent {
		t.Fatal("clean start returned a session")
	}
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("q/persist"), QoS: 1}}})
	rc.expect()
	rc.send(&codec.Disconnect{})
	rc.expectClosed()

	// A QoS 1 message while offline waits in the session.
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	pub.send(&codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("q/persist"), Payload: []byte("queued")})
	pub.expect()

	rc = dialRaw(t, s, codec.V5)
	ca = rc.connect("persist", func(p *codec.Connect) { p.CleanStart = false })
	if !ca.SessionPresent {
		t.Fatal("session not present")
	}
	if p := rc.expect().(*codec.Publish); string(p.Payload) != "queued" || p.QoS != 1 {
		t.Fatalf("queued message: %+v", p)
	}
	rc.send(&codec.Disconnect{})
	rc.expectClosed()

	// Clean start discards it.
	rc = dialRaw(t, s, codec.V5)
	if ca := rc.connect("persist", nil); ca.SessionPresent {
		t.Fatal("clean start kept the session")
	}

	// 3.1.1 clean session 0 keeps the session.
	r3 := dialRaw(t, s, codec.V311)
	r3.connect("v3persist", func(p *codec.Connect) { p.CleanStart = false })
	r3.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("q/v3"), QoS: 1}}})
	r3.expect()
	r3.send(&codec.Disconnect{})
	r3.expectClosed()
	r3 = dialRaw(t, s, codec.V311)
	if ca := r3.connect("v3persist", func(p *codec.Connect) { p.CleanStart = false }); !ca.SessionPresent {
		t.Fatal("3.1.1 session not present")
	}
}

func TestSessionExpires(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V5)
	rc.connect("brief", func(p *codec.Connect) {
		p.Props.SessionExpiry = 1
		p.Props.Set(codec.PropSessionExpiry)
	})
	rc.send(&codec.Disconnect{})
	rc.expectClosed()
	waitFor(t, "session expiry", func() bool { return s.stats.sessionsExpired.Get() == 1 })
	rc = dialRaw(t, s, codec.V5)
	if ca := rc.connect("brief", func(p *codec.Connect) { p.CleanStart = false }); ca.SessionPresent {
		t.Fatal("session present after it expired")
	}
}

// The paho.golang client connects, gets the announced limits and round
// trips a message: the library sees a conforming broker.
func TestPahoV5Connect(t *testing.T) {
	s := startBroker(t, nil)
	se := uint32(30)
	c, ca := dialV5(t, s, &paho.Connect{ClientID: "paho5", CleanStart: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: &se}})
	if ca.ReasonCode != 0 || ca.Properties == nil || ca.Properties.ReceiveMaximum == nil {
		t.Fatalf("connack %+v", ca)
	}
	c.subscribe(t, paho.SubscribeOptions{Topic: "p/#", QoS: 2})
	c.publish(t, &paho.Publish{Topic: "p/1", QoS: 2, Payload: []byte("two")})
	if m := c.expect(t); string(m.Payload) != "two" || m.QoS != 2 {
		t.Fatalf("got %+v", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{"p/#"}}); err != nil {
		t.Fatal(err)
	}
}
