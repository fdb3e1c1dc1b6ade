package fanout

import (
	"bytes"
	"slices"
	"testing"

	"github.com/gannetmq/gannet/codec"
)

func message() *codec.Publish {
	p := &codec.Publish{QoS: 2, Retain: true, Dup: true, PacketID: 77, Topic: []byte("a/b"), Payload: bytes.Repeat([]byte("p"), 1024)}
	p.Props.ContentType = []byte("text/plain")
	p.Props.Set(codec.PropContentType)
	return p
}

// A receiver's bytes are the shared frame with its own packet id in
// place: they decode to the message as that receiver should see it.
func TestFramePerReceiver(t *testing.T) {
	var e Encoder
	e.Reset(message())
	forms := []Form{
		{V5: true, QoS: 1, SubIDs: []uint32{3, 9}},
		{V5: false, QoS: 2, Retain: true},
		{V5: true, QoS: 0},
		{V5: true, QoS: 1, Alias: AliasSet},
		{V5: true, QoS: 1, Alias: AliasUse},
		{V5: true, QoS: 0, Alias: AliasSet, SubIDs: []uint32{7}},
		{V5: true, QoS: 0, Alias: AliasUse},
	}
	for _, f := range forms {
		fr := e.Frame(&f)
		var wire []byte
		for _, part := range fr.Parts(nil, []byte{0x12, 0x34}, []byte{0x01, 0x02}) {
			wire = append(wire, part...)
		}
		if len(wire) != fr.Size() {
			t.Fatalf("%+v: parts %d bytes, Size %d", f, len(wire), fr.Size())
		}
		v := codec.V311
		if f.V5 {
			v = codec.V5
		}
		pkt, _, err := codec.Decode(wire, v, 0)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		p := pkt.(*codec.Publish)
		if p.QoS != f.QoS || p.Retain != f.Retain || p.Dup || !bytes.Equal(p.Payload, message().Payload) {
			t.Fatalf("%+v: decoded %+v", f, p)
		}
		if f.QoS > 0 && p.PacketID != 0x1234 {
			t.Fatalf("%+v: packet id %x", f, p.PacketID)
		}
		if !slices.Equal(p.Props.SubscriptionIDs, f.SubIDs) {
			t.Fatalf("%+v: subscription ids %v", f, p.Props.SubscriptionIDs)
		}
		if f.V5 && string(p.Props.ContentType) != "text/plain" {
			t.Fatalf("%+v: content type lost", f)
		}
		if (f.Alias == AliasUse) != (len(p.Topic) == 0) || (f.Alias != AliasNone) != p.Props.Has(codec.PropTopicAlias) {
			t.Fatalf("%+v: topic %q alias %d", f, p.Topic, p.Props.TopicAlias)
		}
		if f.Alias != AliasNone && p.Props.TopicAlias != 0x0102 {
			t.Fatalf("%+v: alias %x, want the receiver's own 0x0102", f, p.Props.TopicAlias)
		}
	}
}

// One publish to 10,000 receivers encodes one buffer per wire form, not one
// per receiver: the allocation count does not grow with the receivers.
func TestEncodeOncePerForm(t *testing.T) {
	var e Encoder
	msg := message()
	forms := []Form{{V5: true, QoS: 1}, {V5: false, QoS: 1}, {V5: true, QoS: 0}}
	run := func(receivers int) float64 {
		return testing.AllocsPerRun(20, func() {
			e.Reset(msg)
			var parts [][]byte
			id := []byte{0, 1}
			for i := range receivers {
				fr := e.Frame(&forms[i%len(forms)])
				parts = fr.Parts(parts[:0], id, nil)
			}
		})
	}
	small, large := run(3), run(10_000)
	if large != small {
		t.Fatalf("allocations grow with receivers: %v for 3, %v for 10000", small, large)
	}
	if large > 2*float64(len(forms))+2 {
		t.Fatalf("%v allocations for %d forms", large, len(forms))
	}
}

func TestMerged(t *testing.T) {
	var m Merged
	m.Add(Options{QoS: 0, SubID: 9})
	m.Add(Options{QoS: 2, SubID: 3})
	m.Add(Options{QoS: 1, RetainAsPublished: true, SubID: 9})
	if m.QoS != 2 || !m.RetainAsPublished || !slices.Equal(m.SubIDs, []uint32{3, 9}) {
		t.Fatalf("merged %+v", m)
	}
	if q, r := m.Deliver(1, true, false); q != 1 || !r {
		t.Fatalf("deliver %d %v", q, r)
	}
	m = Merged{}
	m.Add(Options{QoS: 1})
	if q, r := m.Deliver(2, true, false); q != 1 || r {
		t.Fatalf("without retain-as-published: %d %v", q, r)
	}
	if _, r := m.Deliver(2, true, true); !r {
		t.Fatal("retained on subscribe lost its flag")
	}
}

// BenchmarkFanout10k is one 1 KB publish to 10,000 receivers in three wire
// forms: encode once per form, then per receiver only the parts.
func BenchmarkFanout10k(b *testing.B) {
	var e Encoder
	msg := message()
	forms := []Form{{V5: true, QoS: 1}, {V5: false, QoS: 1}, {V5: true, QoS: 0}}
	var parts [][]byte
	id := []byte{0, 1}
	b.ReportAllocs()
	for b.Loop() {
		e.Reset(msg)
		for i := range 10_000 {
			fr := e.Frame(&forms[i%3])
			parts = fr.Parts(parts[:0], id, nil)
		}
	}
}

// BenchmarkFanoutTopicAlias is one telemetry publish (a 45-byte topic, a
// 64-byte payload) to 10,000 MQTT 5 QoS 1 receivers, with the topic on
// every frame or replaced by each receiver's alias: the CPU per receiver
// and the bytes each receiver is sent.
func BenchmarkFanoutTopicAlias(b *testing.B) {
	msg := &codec.Publish{QoS: 1, Topic: []byte("factory/line-3/machine-042/sensor/temperature"),
		Payload: bytes.Repeat([]byte("t"), 64)}
	for _, mode := range []struct {
		name  string
		alias AliasMode
	}{{"none", AliasNone}, {"use", AliasUse}} {
		b.Run("alias="+mode.name, func(b *testing.B) {
			var e Encoder
			form := Form{V5: true, QoS: 1, Alias: mode.alias}
			var parts [][]byte
			id, alias := []byte{0, 1}, []byte{0, 7}
			wire := 0
			b.ReportAllocs()
			for b.Loop() {
				e.Reset(msg)
				for range 10_000 {
					fr := e.Frame(&form)
					parts = fr.Parts(parts[:0], id, alias)
				}
				wire = e.Frame(&form).Size()
			}
			b.ReportMetric(float64(wire), "wire-bytes/receiver")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/10_000, "ns/receiver")
		})
	}
}
