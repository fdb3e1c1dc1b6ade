package codec

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder as a stream, in every
// protocol version. Decoding must never panic; a packet that decodes must
// encode to bytes that decode to the same packet; and splitting the input
// in two must not change the outcome.
func FuzzDecode(f *testing.F) {
	for _, fx := range fixtures {
		f.Add(fx.raw, uint8(fx.v), uint16(3))
	}
	for _, c := range malformedCases {
		f.Add(c.raw, uint8(c.v), uint16(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, ver uint8, split uint16) {
		v := versions[int(ver)%len(versions)]
		whole := decodeAll(t, data, v)
		// The same stream arriving in two reads decodes the same way.
		cut := int(split) % (len(data) + 1)
		buf := append([]byte(nil), data[:cut]...)
		var parts []Packet
		var perr error
		for off := 0; ; {
			p, n, err := Decode(buf[off:], v, 0)
			if err == ErrIncomplete && len(buf) < len(data) {
				buf = append(buf, data[cut:]...)
				continue
			}
			if err != nil {
				perr = err
				break
			}
			parts = append(parts, p)
			off += n
		}
		if len(parts) != len(whole.pkts) || CodeOf(perr) != CodeOf(whole.err) {
			t.Fatalf("split at %d: %d packets, err %v; whole: %d packets, err %v", cut, len(parts), perr, len(whole.pkts), whole.err)
		}
	})
}

type decoded struct {
	pkts []Packet
	err  error
}

// decodeAll decodes packets from data until an error, checking the
// round trip of each.
func decodeAll(t *testing.T, data []byte, v Version) decoded {
	var d decoded
	for off := 0; off < len(data); {
		p, n, err := Decode(data[off:], v, 0)
		if err != nil {
			var e *Error
			if err != ErrIncomplete && !errors.As(err, &e) {
				t.Fatalf("error of unexpected type %T: %v", err, err)
			}
			if e != nil && !e.Code.IsError() {
				t.Fatalf("error with a success code: %v", err)
			}
			d.err = err
			return d
		}
		if n <= 0 || n > len(data)-off {
			t.Fatalf("consumed %d of %d", n, len(data)-off)
		}
		enc := p.Append(nil, v)
		if len(enc) != p.Size(v) {
			t.Fatalf("%s: Size %d, Append wrote %d", p.Type(), p.Size(v), len(enc))
		}
		q, m, err := Decode(enc, v, 0)
		if err != nil {
			t.Fatalf("%s: re-decoding own encoding failed: %v\n% x", p.Type(), err, enc)
		}
		if m != len(enc) || !equalPackets(p, q) {
			t.Fatalf("%s: round trip differs\n in: %+v\nout: %+v", p.Type(), p, q)
		}
		if again := q.Append(nil, v); !bytes.Equal(again, enc) {
			t.Fatalf("%s: encoding is not stable", p.Type())
		}
		if sp, ok := p.(*Subscribe); ok {
			checkSubscribeBound(t, sp, data[off:off+n], v)
		}
		d.pkts = append(d.pkts, p)
		off += n
	}
	return d
}

// checkSubscribeBound decodes raw, a SUBSCRIBE that decoded to sp, again
// with a bound on its filters: at their number it decodes the same; one
// below it fails with QuotaExceeded.
func checkSubscribeBound(t *testing.T, sp *Subscribe, raw []byte, v Version) {
	h, hn, err := DecodeFixedHeader(raw)
	if err != nil {
		t.Fatalf("fixed header of a decoded SUBSCRIBE: %v", err)
	}
	var q Subscribe
	if err := q.DecodeAtMost(h, raw[hn:], v, len(sp.Subs)); err != nil || !equalPackets(sp, &q) {
		t.Fatalf("DecodeAtMost(%d) of %d filters: %v, %+v", len(sp.Subs), len(sp.Subs), err, q)
	}
	if len(sp.Subs) > 1 {
		err := q.DecodeAtMost(h, raw[hn:], v, len(sp.Subs)-1)
		if CodeOf(err) != QuotaExceeded {
			t.Fatalf("DecodeAtMost(%d) of %d filters: %v, want quota exceeded", len(sp.Subs)-1, len(sp.Subs), err)
		}
	}
}

// FuzzTopicFilter checks filter and name validation against each other: a
// valid name is a valid filter, and neither panics.
func FuzzTopicFilter(f *testing.F) {
	for _, s := range []string{"a/b", "+/#", "$share/g/a", "#", "a/#/b", "$share/g", "/", "a+"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		nameErr := ValidateTopicName(s)
		filterErr := ValidateTopicFilter(s)
		if nameErr == nil && filterErr != nil && !bytes.HasPrefix(s, sharePrefix) {
			t.Fatalf("%q is a valid name but not a valid filter: %v", s, filterErr)
		}
		if nameErr == nil && bytes.ContainsAny(s, "+#") {
			t.Fatalf("%q with a wildcard passed as a name", s)
		}
	})
}
