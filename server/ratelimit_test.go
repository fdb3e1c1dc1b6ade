package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// --max-publish-rate slows a client down without refusing anything: 30
// QoS 1 publishes at 10 per second (bursts of 10) are all acknowledged,
// over at least two seconds; another client is served meanwhile.
func TestPublishRateSlowsClient(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxPublishRate = 10 })
	sub := dialRaw(t, s, codec.V5)
	sub.connect("sub", nil)
	sub.subscribe("r/#", 1)
	pub := dialRaw(t, s, codec.V5)
	pub.connect("pub", nil)
	start := time.Now()
	var out []byte
	for i := range 30 {
		out = append(out, (&codec.Publish{Topic: []byte("r/x"), Payload: []byte("m"), QoS: 1, PacketID: uint16(i + 1)}).Append(nil, codec.V5)...)
	}
	pub.write(out)
	other := dialRaw(t, s, codec.V5)
	other.connect("other", nil)
	other.ping() // not held up by the limited client
	for i := range 30 {
		a, ok := pub.expect().(*codec.Ack)
		if !ok || a.PacketID != uint16(i+1) || a.Code != codec.Success {
			t.Fatalf("ack %d: %+v", i, a)
		}
	}
	if d := time.Since(start); d < 1900*time.Millisecond {
		t.Fatalf("30 publishes at 10/s (bursts of 10) took %s, want at least 2s", d)
	}
	if s.stats.publishDelayed.Get() == 0 {
		t.Fatal("no delay counted")
	}
	for range 30 {
		if _, ok := sub.expect().(*codec.Publish); !ok {
			t.Fatal("a delivery is missing")
		}
	}
}

// A client that keeps sending far past its rate, more than the broker
// holds back, is disconnected with 0x96.
func TestPublishRateFloodDisconnects(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxPublishRate = 1 })
	pub := dialRaw(t, s, codec.V5)
	pub.connect("flood", nil)
	payload := []byte(strings.Repeat("x", 10_000))
	var out []byte
	for range 40 { // 400 kB, past the 256 KiB held back
		out = append(out, (&codec.Publish{Topic: []byte("f"), Payload: payload}).Append(nil, codec.V5)...)
	}
	go func() { _, _ = pub.c.Write(out) }()
	var last codec.Packet
	for _, p := range pub.expectClosed() {
		last = p
	}
	if d, ok := last.(*codec.Disconnect); !ok || d.Code != codec.MessageRateTooHigh {
		t.Fatalf("last packet %v, want DISCONNECT 0x96", last)
	}
	if s.stats.rateDisconnects.Get() != 1 {
		t.Fatal("the disconnect was not counted")
	}
}

// A client does not get full buckets back by connecting again: the
// buckets its connection left with are taken up by its next one (on
// this node), and another client id starts with full buckets.
func TestPublishRateKeptAcrossReconnects(t *testing.T) {
	s := startBroker(t, func(c *Config) { c.MaxPublishRate = 0.1 }) // a bucket of 1, refilled in 10 s
	publish := func(id string) *rawConn {
		rc := dialRaw(t, s, codec.V5)
		rc.connect(id, nil)
		rc.send(&codec.Publish{Topic: []byte("k"), Payload: []byte("m"), QoS: 1, PacketID: 1})
		return rc
	}
	first := publish("again")
	if a, ok := first.expect().(*codec.Ack); !ok || a.Code != codec.Success {
		t.Fatalf("the first publish: %v, want PUBACK", a)
	}
	if n := s.stats.publishDelayed.Get(); n != 0 {
		t.Fatalf("%d publishes delayed before the bucket was spent", n)
	}
	first.send(&codec.Disconnect{})
	first.expectClosed()
	waitFor(t, "the first connection gone", func() bool { return s.stats.clients.Load() == 0 })

	// The same client, at once: its bucket is still empty, the publish
	// waits.
	publish("again")
	waitFor(t, "the publish of the reconnected client delayed", func() bool { return s.stats.publishDelayed.Get() == 1 })

	// Another client id is not held back.
	other := publish("other")
	if a, ok := other.expect().(*codec.Ack); !ok || a.Code != codec.Success {
		t.Fatalf("another client's first publish: %v, want PUBACK", a)
	}
	if n := s.stats.publishDelayed.Get(); n != 1 {
		t.Fatalf("%d publishes delayed, want only the reconnected client's", n)
	}
}

// --max-publish-bytes-rate counts SUBSCRIBE and UNSUBSCRIBE bytes too: a
// client sending large SUBSCRIBEs past it is read more slowly, not
// refused, and every one is answered in order.
func TestByteRateHoldsSubscribes(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.MaxPacketSize = 4096 // the bucket holds 4,096 bytes
		c.MaxPublishBytesRate = 1000
	})
	sub := dialRaw(t, s, codec.V5)
	sub.connect("big-subscriber", nil)
	var out []byte
	filters := func(i int) []codec.Subscription {
		var fs []codec.Subscription
		for j := range 150 { // about 2 KB a packet
			fs = append(fs, codec.Subscription{Filter: fmt.Appendf(nil, "s/%d/%03d", i, j), QoS: 1})
		}
		return fs
	}
	for i := range 3 { // 6 KB: the third waits for the bucket
		out = append(out, (&codec.Subscribe{PacketID: uint16(i + 1), Subs: filters(i)}).Append(nil, codec.V5)...)
	}
	out = append(out, (&codec.Unsubscribe{PacketID: 4, Filters: [][]byte{[]byte("s/0/000")}}).Append(nil, codec.V5)...)
	sub.write(out)
	other := dialRaw(t, s, codec.V5)
	other.connect("other", nil)
	other.ping() // not held up by the limited client
	for i := range 3 {
		sa, ok := sub.expect().(*codec.Suback)
		if !ok || sa.PacketID != uint16(i+1) || len(sa.Codes) != 150 || sa.Codes[0] != 1 {
			t.Fatalf("SUBACK %d: %+v", i+1, sa)
		}
	}
	if ua, ok := sub.expect().(*codec.Unsuback); !ok || ua.PacketID != 4 {
		t.Fatalf("UNSUBACK: %+v", ua)
	}
	if s.stats.subscribeDelayed.Get() == 0 {
		t.Fatal("no subscribe delay counted")
	}
	if s.stats.publishDelayed.Get() != 0 {
		t.Fatal("a subscribe counted as a delayed publish")
	}
}

// A packet larger than what the broker holds back, waiting for the bucket
// alone, is held until the bucket has room, not taken as a flood: the
// client sent one packet and waits for its answer.
func TestByteRateHoldsOneLargePacket(t *testing.T) {
	s := startBroker(t, func(c *Config) {
		c.MaxPacketSize = 512 << 10 // the bucket holds 512 KiB
		c.MaxPublishBytesRate = 300 << 10
	})
	pub := dialRaw(t, s, codec.V5)
	pub.connect("large", nil)
	payload := []byte(strings.Repeat("x", 400<<10)) // past holdLimit
	for i := range 2 {                              // the second waits about a second
		pub.send(&codec.Publish{Topic: []byte("l"), Payload: payload, QoS: 1, PacketID: uint16(i + 1)})
	}
	for i := range 2 {
		if a, ok := pub.expect().(*codec.Ack); !ok || a.PacketID != uint16(i+1) || a.Code != codec.Success {
			t.Fatalf("PUBACK %d: %+v", i+1, a)
		}
	}
	if s.stats.publishDelayed.Get() == 0 {
		t.Fatal("the second publish was not held")
	}
	if n := s.stats.rateDisconnects.Get(); n != 0 {
		t.Fatalf("%d rate-limited disconnects", n)
	}
}
