package codec

import (
	"bytes"
	"testing"
)

// benchPublish is a 256-byte MQTT 5 PUBLISH with three properties: message
// expiry, content type and one user property.
func benchPublish() *Publish {
	p := &Publish{QoS: 1, Topic: []byte("site/17/dev/4242/temp"), PacketID: 4242,
		Props: Properties{MessageExpiry: 60, ContentType: []byte("application/json"),
			User: []UserProperty{{Key: []byte("trace"), Value: []byte("0af7651916cd43dd")}}}}
	p.Props.Set(PropMessageExpiry)
	p.Props.Set(PropContentType)
	p.Payload = bytes.Repeat([]byte{'x'}, 256-p.Size(V5))
	for p.Size(V5) > 256 {
		p.Payload = p.Payload[1:]
	}
	return p
}

func BenchmarkDecodePublish(b *testing.B) {
	enc := benchPublish().Append(nil, V5)
	if len(enc) != 256 {
		b.Fatalf("packet is %d bytes", len(enc))
	}
	var p Publish
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		h, n, err := DecodeFixedHeader(enc)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Decode(h, enc[n:], V5); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodePublish(b *testing.B) {
	p := benchPublish()
	buf := make([]byte, 0, 512)
	b.SetBytes(int64(p.Size(V5)))
	b.ReportAllocs()
	for b.Loop() {
		buf = p.Append(buf[:0], V5)
	}
}

func BenchmarkDecodeConnect(b *testing.B) {
	enc := samples(V5)[1].Append(nil, V5)
	var p Connect
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		h, n, _ := DecodeFixedHeader(enc)
		if err := p.Decode(h, enc[n:], V5); err != nil {
			b.Fatal(err)
		}
	}
}
