package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
)

// Limits of the broker the bad-input table runs against.
const (
	biMaxPacket  = 1024
	biReceiveMax = 2
	biAliasMax   = 4
)

func biConfig(c *Config) {
	c.MaxPacketSize = biMaxPacket
	c.ReceiveMaximum = biReceiveMax
	c.TopicAliasMaximum = biAliasMax
	c.connLogBurst = 1 << 30 // every warning is checked for
}

// biResp is one packet the broker must send back.
type biResp struct {
	typ  codec.Type
	code codec.ReasonCode // v5 reason code; CONNACK return code in 3.x
	id   uint16           // packet identifier, for acknowledgements
}

func (r biResp) String() string {
	s := r.typ.String() + " " + r.code.String()
	if r.id != 0 {
		s += " id " + strconv.Itoa(int(r.id))
	}
	return s
}

func biRespOf(p codec.Packet) biResp {
	switch p := p.(type) {
	case *codec.Connack:
		return biResp{typ: codec.CONNACK, code: p.Code}
	case *codec.Disconnect:
		return biResp{typ: codec.DISCONNECT, code: p.Code}
	case *codec.Ack:
		return biResp{typ: p.Kind, code: p.Code, id: p.PacketID}
	case *codec.Suback:
		return biResp{typ: codec.SUBACK, id: p.PacketID}
	}
	return biResp{typ: p.Type()}
}

func biDisc(code codec.ReasonCode) []biResp { return []biResp{{typ: codec.DISCONNECT, code: code}} }
func biConnack(code codec.ReasonCode) []biResp {
	return []biResp{{typ: codec.CONNACK, code: code}}
}

// biConnect is a valid CONNECT with the given client id.
func biConnect(v codec.Version, id string) []byte {
	return (&codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: v, CleanStart: true, KeepAlive: 30,
		ClientID: []byte(id)}).Append(nil, v)
}

func biPublish(v codec.Version, p codec.Publish) []byte { return p.Append(nil, v) }

// biAliasPublish is a v5 PUBLISH of topic with topic alias a.
func biAliasPublish(topic string, a uint16) []byte {
	p := codec.Publish{Topic: []byte(topic), Payload: []byte("x")}
	p.Props.TopicAlias = a
	p.Props.Set(codec.PropTopicAlias)
	return p.Append(nil, codec.V5)
}

// biSizedPublish is a v5 QoS 1 PUBLISH exactly size bytes long.
func biSizedPublish(size int) []byte {
	p := codec.Publish{QoS: 1, PacketID: 9, Topic: []byte("bi/size")}
	p.Payload = make([]byte, size-p.Size(codec.V5))
	for p.Size(codec.V5) > size { // the remaining length grew a byte
		p.Payload = p.Payload[1:]
	}
	if p.Size(codec.V5) != size {
		panic("BUG: cannot build a PUBLISH of " + strconv.Itoa(size) + " bytes")
	}
	return p.Append(nil, codec.V5)
}

func biCat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// biRow is one malformed or out-of-order input and the exact answer it
// gets: the packets the broker sends back, then either a close (open
// false) or a connection that still answers PINGREQ.
type biRow struct {
	name    string
	v       codec.Version
	connect bool   // a valid CONNECT goes first
	send    []byte // then these bytes
	want    []biResp
	open    bool
	// reason is the cause the warning log line must give; empty when the
	// connection stays open and nothing is logged.
	reason string
}

var (
	// A v5 CONNECT with every byte spelled out; rows below corrupt copies.
	biV5Connect = []byte{
		0x10, 16, // CONNECT, remaining length 16
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		5,     // protocol level 5
		0x02,  // flags: clean start
		0, 30, // keepalive 30 s
		0,                   // property length 0
		0, 3, 'c', 'i', 'd', // client id "cid"
	}
	biV311Connect = []byte{
		0x10, 15, // CONNECT, remaining length 15
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		4,     // protocol level 4 (3.1.1)
		0x02,  // flags: clean session
		0, 30, // keepalive 30 s
		0, 3, 'c', 'i', 'd', // client id "cid"
	}
)

// biWithByte returns a copy of b with b[i] = x.
func biWithByte(b []byte, i int, x byte) []byte {
	c := append([]byte(nil), b...)
	c[i] = x
	return c
}

// biWithBytes returns b with extra inserted at i and the remaining length
// (b[1], one byte) grown to match.
func biWithBytes(b []byte, i int, extra ...byte) []byte {
	c := append(append(append([]byte(nil), b[:i]...), extra...), b[i:]...)
	c[1] += byte(len(extra))
	return c
}

var biRows = []biRow{
	// --- before CONNECT: the version is not known, so the broker closes
	// without a word.
	// [MQTT-3.1.0-1] the first packet from the client must be CONNECT.
	{name: "v5 first packet PUBLISH", v: codec.V5, send: []byte{0x30, 3, 0, 1, 't'}, reason: "first packet is not CONNECT"},
	// [MQTT-3.1.0-1]
	{name: "3.1.1 first packet PINGREQ", v: codec.V311, send: []byte{0xc0, 0}, reason: "first packet is not CONNECT"},
	// Section 2.1.2: packet type 0 is reserved, a malformed packet.
	{name: "first packet of reserved type 0", v: codec.V5, send: []byte{0x00, 0}, reason: "malformed packet"},

	// --- a broken v5 CONNECT is answered with CONNACK and its code before
	// the close (section 4.13.1).
	// [MQTT-3.1.2-3] the reserved flag must be 0.
	{name: "v5 CONNECT reserved flag", v: codec.V5, send: biWithByte(biV5Connect, 9, 0x03), want: biConnack(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.1.2-3] 3.x: no CONNACK for a malformed CONNECT, just a close.
	{name: "3.1.1 CONNECT reserved flag", v: codec.V311, send: biWithByte(biV311Connect, 9, 0x03), reason: "malformed CONNECT"},
	// [MQTT-3.1.2-12] will QoS 3 (flags 0x1e: will, QoS 3, clean start).
	{name: "v5 CONNECT will QoS 3", v: codec.V5, send: biWithByte(biV5Connect, 9, 0x1e), want: biConnack(codec.MalformedPacket), reason: "malformed packet"},
	// Section 3.1.2.11.3: Receive Maximum given twice is a protocol error.
	{name: "v5 CONNECT duplicate property", v: codec.V5, send: biWithBytes(biWithByte(biV5Connect, 12, 6), 13, 0x21, 0, 5, 0x21, 0, 5), want: biConnack(codec.ProtocolError), reason: "protocol error"},
	// Section 3.1.2.11.3: Receive Maximum 0 is a protocol error.
	{name: "v5 CONNECT receive maximum 0", v: codec.V5, send: biWithBytes(biWithByte(biV5Connect, 12, 3), 13, 0x21, 0, 0), want: biConnack(codec.ProtocolError), reason: "protocol error"},
	// [MQTT-1.5.4-1] client id that is not UTF-8.
	{name: "v5 CONNECT client id not UTF-8", v: codec.V5, send: biWithByte(biV5Connect, 16, 0xff), want: biConnack(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.1.2-2] protocol level 6: CONNACK 0x01 in the 3.1.1 form,
	// which every client level can read.
	{name: "CONNECT protocol level 6", v: codec.V311, send: biWithByte(biV311Connect, 8, 6), want: biConnack(codec.V3UnacceptableProtocolVersion), reason: "unsupported protocol version"},

	// --- out of order after CONNECT.
	// [MQTT-3.1.0-2] a second CONNECT is a protocol error.
	{name: "v5 second CONNECT", v: codec.V5, connect: true, send: biConnect(codec.V5, "again"), want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// [MQTT-3.1.0-2]
	{name: "3.1.1 second CONNECT", v: codec.V311, connect: true, send: biConnect(codec.V311, "again"), reason: "protocol error"},
	// Section 2.1.2: CONNACK goes from server to client only.
	{name: "v5 CONNACK from the client", v: codec.V5, connect: true, send: []byte{0x20, 3, 0, 0, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// Section 3.13: PINGRESP goes from server to client only.
	{name: "v5 PINGRESP from the client", v: codec.V5, connect: true, send: []byte{0xd0, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// Section 3.13, 3.x: a silent close.
	{name: "3.1.1 PINGRESP from the client", v: codec.V311, connect: true, send: []byte{0xd0, 0}, reason: "protocol error"},
	// Section 3.9: SUBACK goes from server to client only.
	{name: "v5 SUBACK from the client", v: codec.V5, connect: true, send: []byte{0x90, 4, 0, 1, 0, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// Section 4.12: a client that gave no Authentication Method in CONNECT
	// must not send AUTH.
	{name: "v5 AUTH without method", v: codec.V5, connect: true, send: []byte{0xf0, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// Section 2.1.2: AUTH does not exist before MQTT 5.
	{name: "3.1.1 AUTH", v: codec.V311, connect: true, send: []byte{0xf0, 0}, reason: "malformed packet"},
	// [MQTT-4.3.3-11] a PUBREL is answered with PUBCOMP; for an id the
	// broker does not hold the code is 0x92 (section 3.7.2.1), and the
	// connection stays.
	{name: "v5 PUBREL unknown id", v: codec.V5, connect: true, send: []byte{0x62, 2, 0x01, 0x2c},
		want: []biResp{{typ: codec.PUBCOMP, code: codec.PacketIdentifierNotFound, id: 300}}, open: true},
	// Section 4.3.3 (3.1.1): PUBREL is answered with PUBCOMP; 3.1.1 has no
	// reason codes.
	{name: "3.1.1 PUBREL unknown id", v: codec.V311, connect: true, send: []byte{0x62, 2, 0x01, 0x2c},
		want: []biResp{{typ: codec.PUBCOMP, id: 300}}, open: true},
	// [MQTT-3.14.2-2] session expiry set in DISCONNECT after CONNECT set 0.
	{name: "v5 DISCONNECT sets session expiry", v: codec.V5, connect: true,
		send: []byte{0xe0, 7, 0x00, 5, 0x11, 0, 0, 0, 10}, want: biDisc(codec.ProtocolError), reason: "protocol error"},

	// --- malformed fixed headers.
	// [MQTT-3.3.1-4] PUBLISH with QoS 3 (flags 0110).
	{name: "v5 PUBLISH QoS 3", v: codec.V5, connect: true, send: []byte{0x36, 5, 0, 1, 't', 0, 1}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.3.1-4]
	{name: "3.1.1 PUBLISH QoS 3", v: codec.V311, connect: true, send: []byte{0x36, 5, 0, 1, 't', 0, 1}, reason: "malformed packet"},
	// [MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH.
	{name: "v5 PUBLISH QoS 0 with DUP", v: codec.V5, connect: true, send: []byte{0x38, 3, 0, 1, 't'}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.6.1-1] PUBREL fixed header flags must be 0010.
	{name: "v5 PUBREL flags 0000", v: codec.V5, connect: true, send: []byte{0x60, 2, 0, 1}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.8.1-1] SUBSCRIBE fixed header flags must be 0010.
	{name: "v5 SUBSCRIBE flags 0000", v: codec.V5, connect: true, send: []byte{0x80, 7, 0, 1, 0, 0, 1, 'a', 0}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.8.1-1]
	{name: "3.1.1 SUBSCRIBE flags 0000", v: codec.V311, connect: true, send: []byte{0x80, 6, 0, 1, 0, 1, 'a', 0}, reason: "malformed packet"},
	// [MQTT-3.10.1-1] UNSUBSCRIBE fixed header flags must be 0010.
	{name: "v5 UNSUBSCRIBE flags 0011", v: codec.V5, connect: true, send: []byte{0xa3, 6, 0, 1, 0, 0, 1, 'a'}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-2.1.3-1] reserved flags of PINGREQ must be 0.
	{name: "v5 PINGREQ flags 0001", v: codec.V5, connect: true, send: []byte{0xc1, 0}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// Section 1.5.5: a variable byte integer has at most four bytes.
	{name: "v5 remaining length of 5 bytes", v: codec.V5, connect: true, send: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// Section 1.5.5
	{name: "3.1.1 remaining length of 5 bytes", v: codec.V311, connect: true, send: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, reason: "malformed packet"},

	// --- malformed bodies.
	// [MQTT-1.5.4-1] a topic that is not well-formed UTF-8.
	{name: "v5 topic not UTF-8", v: codec.V5, connect: true, send: []byte{0x30, 5, 0, 2, 0xc3, 0x28, 0}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-1.5.4-1] a UTF-16 surrogate (U+D800) encoded in UTF-8.
	{name: "v5 topic with a surrogate", v: codec.V5, connect: true, send: []byte{0x30, 6, 0, 3, 0xed, 0xa0, 0x80, 0}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-1.5.4-2] U+0000 in a topic.
	{name: "v5 topic with U+0000", v: codec.V5, connect: true, send: []byte{0x30, 6, 0, 3, 'a', 0, 'b', 0}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-1.5.4-1]
	{name: "3.1.1 topic not UTF-8", v: codec.V311, connect: true, send: []byte{0x30, 4, 0, 2, 0xc3, 0x28}, reason: "malformed packet"},
	// Section 1.5.4: a string whose length runs past the packet.
	{name: "v5 topic length past the end", v: codec.V5, connect: true, send: []byte{0x30, 4, 0, 9, 'a', 'b'}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// Section 2.2.2.2: a property the packet type does not allow (0x11,
	// session expiry, in PUBLISH) makes a malformed packet.
	{name: "v5 PUBLISH with a CONNECT property", v: codec.V5, connect: true, send: []byte{0x30, 9, 0, 1, 't', 5, 0x11, 0, 0, 0, 1}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3.3.2-2] a wildcard in a topic name.
	{name: "v5 wildcard topic +", v: codec.V5, connect: true, send: biPublish(codec.V5, codec.Publish{Topic: []byte("a/+/b")}), want: biDisc(codec.TopicNameInvalid), reason: "topic name invalid"},
	// [MQTT-3.3.2-2]
	{name: "v5 wildcard topic #", v: codec.V5, connect: true, send: biPublish(codec.V5, codec.Publish{QoS: 1, PacketID: 1, Topic: []byte("a/#")}), want: biDisc(codec.TopicNameInvalid), reason: "topic name invalid"},
	// [MQTT-3.3.2-2]
	{name: "3.1.1 wildcard topic", v: codec.V311, connect: true, send: biPublish(codec.V311, codec.Publish{Topic: []byte("a/#")}), reason: "topic name invalid"},
	// [MQTT-2.2.1-3] QoS 1 PUBLISH with packet id 0.
	{name: "v5 PUBLISH QoS 1 id 0", v: codec.V5, connect: true, send: []byte{0x32, 6, 0, 1, 't', 0, 0, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// [MQTT-3.3.4-6] a PUBLISH from a client carries a subscription id.
	{name: "v5 PUBLISH with subscription id", v: codec.V5, connect: true, send: []byte{0x30, 6, 0, 1, 't', 2, 0x0b, 1}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// Section 3.8.3 ([MQTT-3.8.3-3] in 3.1.1): SUBSCRIBE needs at least one
	// topic filter; without one it is a protocol error.
	{name: "v5 SUBSCRIBE without filters", v: codec.V5, connect: true, send: []byte{0x82, 3, 0, 1, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// [MQTT-3.8.3-3] 3.1.1: a protocol violation, closed silently.
	{name: "3.1.1 SUBSCRIBE without filters", v: codec.V311, connect: true, send: []byte{0x82, 2, 0, 1}, reason: "protocol error"},
	// [MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter.
	{name: "v5 UNSUBSCRIBE without filters", v: codec.V5, connect: true, send: []byte{0xa2, 3, 0, 1, 0}, want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// [MQTT-3.8.3-5] SUBSCRIBE options with reserved bits set.
	{name: "v5 SUBSCRIBE reserved option bits", v: codec.V5, connect: true, send: []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0xc0}, want: biDisc(codec.MalformedPacket), reason: "malformed packet"},
	// [MQTT-3-8.3-4] (3.1.1) requested QoS 3 is malformed.
	{name: "3.1.1 SUBSCRIBE QoS 3", v: codec.V311, connect: true, send: []byte{0x82, 6, 0, 1, 0, 1, 'a', 3}, reason: "malformed packet"},
	// Section 3.4.2.1: PUBACK with a reason code it may not carry (0x92).
	{name: "v5 PUBACK with a PUBCOMP code", v: codec.V5, connect: true, send: []byte{0x40, 3, 0, 1, 0x92}, want: biDisc(codec.ProtocolError), reason: "protocol error"},

	// --- limits.
	// [MQTT-3.2.2-15] a packet larger than the Maximum Packet Size the
	// broker announced: DISCONNECT 0x95 (section 4.13), decided on the fixed
	// header alone (remaining length 2000).
	{name: "v5 packet too large", v: codec.V5, connect: true, send: append([]byte{0x30, 0xd0, 0x0f}, 0, 1, 't'), want: biDisc(codec.PacketTooLarge), reason: "packet too large"},
	// [MQTT-3.2.2-15] one byte over the limit.
	{name: "v5 packet one byte too large", v: codec.V5, connect: true, send: biSizedPublish(biMaxPacket + 1), want: biDisc(codec.PacketTooLarge), reason: "packet too large"},
	// [MQTT-3.2.2-15] exactly at the limit is fine.
	{name: "v5 packet at the limit", v: codec.V5, connect: true, send: biSizedPublish(biMaxPacket), want: []biResp{{typ: codec.PUBACK, id: 9}}, open: true},
	// [MQTT-3.2.2-15] 3.x: the same limit, closed silently.
	{name: "3.1.1 packet too large", v: codec.V311, connect: true, send: append([]byte{0x30, 0xd0, 0x0f}, 0, 1, 't'), reason: "packet too large"},
	// Section 3.3.4, flow control: more unacknowledged QoS 2 publishes than
	// the Receive Maximum (2) the broker announced: 0x93 on the third.
	{name: "v5 receive maximum exceeded", v: codec.V5, connect: true, send: biCat(
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 1, Topic: []byte("bi/q2")}),
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 2, Topic: []byte("bi/q2")}),
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 3, Topic: []byte("bi/q2")})),
		want:   []biResp{{typ: codec.PUBREC, id: 1}, {typ: codec.PUBREC, id: 2}, {typ: codec.DISCONNECT, code: codec.ReceiveMaximumExceeded}},
		reason: "receive maximum exceeded"},
	// Section 3.3.4: only QoS 2 publishes not yet released count; a resent
	// PUBLISH with the same id is acknowledged again, not counted twice.
	{name: "v5 receive maximum counts unreleased ids", v: codec.V5, connect: true, send: biCat(
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 1, Topic: []byte("bi/q2")}),
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 1, Dup: true, Topic: []byte("bi/q2")}),
		[]byte{0x62, 2, 0, 1}, // PUBREL 1
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 2, Topic: []byte("bi/q2")}),
		biPublish(codec.V5, codec.Publish{QoS: 2, PacketID: 3, Topic: []byte("bi/q2")})),
		want: []biResp{{typ: codec.PUBREC, id: 1}, {typ: codec.PUBREC, id: 1}, {typ: codec.PUBCOMP, id: 1},
			{typ: codec.PUBREC, id: 2}, {typ: codec.PUBREC, id: 3}}, open: true},
	// [MQTT-3.3.2-8] topic alias 0.
	{name: "v5 topic alias 0", v: codec.V5, connect: true, send: biAliasPublish("t", 0), want: biDisc(codec.TopicAliasInvalid), reason: "topic alias invalid"},
	// [MQTT-3.3.2-9] topic alias above the Topic Alias Maximum (4).
	{name: "v5 topic alias above maximum", v: codec.V5, connect: true, send: biAliasPublish("t", biAliasMax+1), want: biDisc(codec.TopicAliasInvalid), reason: "topic alias invalid"},
	// [MQTT-3.3.2-9] the maximum itself is fine; then the alias alone
	// stands for the topic.
	{name: "v5 topic alias at maximum", v: codec.V5, connect: true, send: biCat(biAliasPublish("t", biAliasMax), biAliasPublish("", biAliasMax)), open: true},
	// Section 3.3.2.3.4: an empty topic with an alias that was never set is
	// a protocol error.
	{name: "v5 topic alias never set", v: codec.V5, connect: true, send: biAliasPublish("", 2), want: biDisc(codec.ProtocolError), reason: "protocol error"},
	// Section 3.3.2.3.2: payload format indicator 1 with a payload that is
	// not UTF-8; at QoS 0 there is no PUBACK to carry 0x99.
	{name: "v5 payload not UTF-8", v: codec.V5, connect: true, send: []byte{0x30, 7, 0, 1, 't', 2, 0x01, 1, 0xff}, want: biDisc(codec.PayloadFormatInvalid), reason: "payload format invalid"},
}

// biLog collects the broker's JSON log lines.
type biLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *biLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records returns every log record with all attributes as strings.
func (l *biLog) records(t testing.TB) []map[string]string {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		rec := make(map[string]string, len(raw))
		for k, v := range raw {
			rec[k] = fmt.Sprint(v)
		}
		out = append(out, rec)
	}
	return out
}

// warning returns the first warning whose attributes include all of want.
func (l *biLog) warning(t testing.TB, want map[string]string) map[string]string {
	t.Helper()
next:
	for _, rec := range l.records(t) {
		if rec["level"] != "WARN" {
			continue
		}
		for k, v := range want {
			if rec[k] != v {
				continue next
			}
		}
		return rec
	}
	return nil
}

// Each malformed or out-of-order input gets exactly the answer the
// specification asks for: a v5 client hears the reason code in DISCONNECT
// (CONNACK before CONNECT completed), a 3.x client is closed without a
// word, and a warning names the client and the cause.
func TestBadInputAnswers(t *testing.T) {
	t.Parallel()
	var logs biLog
	s := startBrokerRetry(t, func(c *Config) {
		biConfig(c)
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	for i, row := range biRows {
		t.Run(row.name, func(t *testing.T) {
			rc := dialRaw(t, s, row.v)
			id := fmt.Sprintf("bi-%02d", i)
			if row.connect {
				if ca := rc.connect(id, nil); ca.Code != codec.Success {
					t.Fatalf("CONNECT refused: %v", ca.Code)
				}
			}
			rc.write(row.send)
			var got []codec.Packet
			if row.open {
				for range row.want {
					got = append(got, rc.expect())
				}
				if extra := rc.ping(); len(extra) != 0 {
					t.Errorf("unexpected packets before PINGRESP: %v", extra)
				}
			} else {
				got = rc.expectClosed()
			}
			resp := make([]biResp, len(got))
			for i, p := range got {
				resp[i] = biRespOf(p)
			}
			if fmt.Sprint(resp) != fmt.Sprint(row.want) {
				state := "then a close"
				if row.open {
					state = "and the connection open"
				}
				t.Fatalf("got %v, want %v %s", resp, row.want, state)
			}
			if row.reason == "" {
				return
			}
			// The warning is logged before the close, so it is there now.
			want := map[string]string{"reason": row.reason}
			if row.connect {
				want["client"] = id
			} else {
				want["remote"] = rc.c.LocalAddr().String()
			}
			if rec := logs.warning(t, want); rec == nil {
				t.Errorf("no warning with %v in the log", want)
			} else if !strings.Contains(rec["msg"], "connection") {
				t.Errorf("warning %v does not say the connection is closed or refused", rec)
			}
		})
	}
}

// The log line for a client that breaks the protocol carries its client
// id, its address, the reason and the rule broken, at level WARN.
func TestBadInputLogLine(t *testing.T) {
	t.Parallel()
	var logs biLog
	s := startBrokerRetry(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	rc := dialRaw(t, s, codec.V5)
	rc.connect("log-me", nil)
	rc.send(&codec.Publish{Topic: []byte("no/#/wildcards")})
	if got := rc.expectClosed(); len(got) != 1 || biRespOf(got[0]) != biDisc(codec.TopicNameInvalid)[0] {
		t.Fatalf("got %v, want DISCONNECT 0x90", got)
	}
	rec := logs.warning(t, map[string]string{"client": "log-me"})
	if rec == nil {
		t.Fatalf("no warning for client log-me; log: %v", logs.records(t))
	}
	if rec["reason"] != "topic name invalid" {
		t.Errorf("reason %q, want %q", rec["reason"], "topic name invalid")
	}
	if rec["remote"] != rc.c.LocalAddr().String() {
		t.Errorf("remote %q, want %q", rec["remote"], rc.c.LocalAddr())
	}
	if !strings.Contains(rec["err"], "MQTT-3.3.2-2") || !strings.Contains(rec["err"], "no/#/wildcards") {
		t.Errorf("err %q does not name the rule and the topic", rec["err"])
	}
}

// biGoodPair exchanges QoS 1 and QoS 2 messages between a 3.1.1 publisher
// and a v5 subscriber, checking every acknowledgement and payload.
type biGoodPair struct {
	pub, sub *rawConn
	n        int
}

func biNewGoodPair(t *testing.T, s *Server) *biGoodPair {
	sub := dialRaw(t, s, codec.V5)
	sub.connect("good-sub", nil)
	sub.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("good/#"), QoS: 2}}})
	if sa, ok := sub.expect().(*codec.Suback); !ok || len(sa.Codes) != 1 || sa.Codes[0] != codec.GrantedQoS2 {
		t.Fatalf("good subscriber: got %+v, want SUBACK granting QoS 2", sa)
	}
	pub := dialRaw(t, s, codec.V311)
	pub.connect("good-pub", nil)
	return &biGoodPair{pub: pub, sub: sub}
}

// roundTrip sends one message and completes both flows.
func (g *biGoodPair) roundTrip(t *testing.T) {
	t.Helper()
	g.n++
	qos := byte(1 + g.n%2)
	pid := uint16(g.n%60000 + 1)
	payload := []byte("good " + strconv.Itoa(g.n))
	g.pub.send(&codec.Publish{QoS: qos, PacketID: pid, Topic: []byte("good/pair"), Payload: payload})
	ack, ok := g.pub.expect().(*codec.Ack)
	wantKind := codec.PUBACK
	if qos == 2 {
		wantKind = codec.PUBREC
	}
	if !ok || ack.Kind != wantKind || ack.PacketID != pid {
		t.Fatalf("message %d: publisher got %+v, want %v %d", g.n, ack, wantKind, pid)
	}
	if qos == 2 {
		g.pub.send(&codec.Ack{Kind: codec.PUBREL, PacketID: pid})
		if a, ok := g.pub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBCOMP || a.PacketID != pid {
			t.Fatalf("message %d: publisher got %+v, want PUBCOMP %d", g.n, a, pid)
		}
	}
	p, ok := g.sub.expect().(*codec.Publish)
	if !ok || string(p.Payload) != string(payload) || p.QoS != qos || string(p.Topic) != "good/pair" {
		t.Fatalf("message %d: subscriber got %+v, want %q at QoS %d", g.n, p, payload, qos)
	}
	if qos == 1 {
		g.sub.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		return
	}
	g.sub.send(&codec.Ack{Kind: codec.PUBREC, PacketID: p.PacketID})
	if a, ok := g.sub.expect().(*codec.Ack); !ok || a.Kind != codec.PUBREL || a.PacketID != p.PacketID {
		t.Fatalf("message %d: subscriber got %+v, want PUBREL %d", g.n, a, p.PacketID)
	}
	g.sub.send(&codec.Ack{Kind: codec.PUBCOMP, PacketID: p.PacketID})
}

// While other connections send every bad input of the table over and
// over, a well-behaved pair on the same broker keeps exchanging messages
// at QoS 1 and 2 without a loss, a duplicate or a delay past the read
// deadline.
func TestBadInputDoesNotDisturbOthers(t *testing.T) {
	t.Parallel()
	s := startBrokerRetry(t, func(c *Config) {
		biConfig(c)
		c.Logger = slog.New(slog.DiscardHandler)
	})
	good := biNewGoodPair(t, s)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent sync.Map // worker -> connections made
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for i := 0; ; i++ {
				select {
				case <-stop:
					sent.Store(w, n)
					return
				default:
				}
				row := biRows[(i*4+w)%len(biRows)]
				c, err := net.Dial("tcp", s.Addr())
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				n++
				b := row.send
				if row.connect {
					b = biCat(biConnect(row.v, fmt.Sprintf("noisy-%d-%d", w, i)), b)
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(b)
				_ = c.(*net.TCPConn).CloseWrite()
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}
		}()
	}
	for range 200 {
		good.roundTrip(t)
	}
	close(stop)
	wg.Wait()
	total := 0
	sent.Range(func(_, v any) bool { total += v.(int); return true })
	if total < len(biRows) {
		t.Fatalf("only %d bad connections ran alongside the good pair; want at least %d", total, len(biRows))
	}
	// Nothing from the noise reached the good subscriber.
	if got := good.sub.ping(); len(got) != 0 {
		t.Fatalf("good subscriber got %v", got)
	}
}

// biFuzzPackets is a set of valid encodings of every packet a client sends,
// with properties, to be corrupted.
func biFuzzPackets(v codec.Version) [][]byte {
	v5 := v == codec.V5
	var pkts []codec.Packet
	conn := &codec.Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: v, CleanStart: true, KeepAlive: 10,
		ClientID: []byte("fz"), WillFlag: true, WillQoS: 1, WillTopic: []byte("fz/will"), WillPayload: []byte("gone"),
		UsernameFlag: true, Username: []byte("u"), PasswordFlag: true, Password: []byte("p")}
	if v5 {
		conn.Props.SessionExpiry = 2
		conn.Props.Set(codec.PropSessionExpiry)
		conn.Props.ReceiveMaximum = 3
		conn.Props.Set(codec.PropReceiveMaximum)
		conn.Props.TopicAliasMaximum = 2
		conn.Props.Set(codec.PropTopicAliasMaximum)
		conn.WillProps.WillDelay = 1
		conn.WillProps.Set(codec.PropWillDelay)
	}
	pkts = append(pkts, conn)
	sub := &codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{
		{Filter: []byte("fz/#"), QoS: 2}, {Filter: []byte("$share/g/fz/+"), QoS: 1}, {Filter: []byte("+/x"), QoS: 0}}}
	if v5 {
		sub.Props.SubscriptionIDs = []uint32{7}
		sub.Subs[0].RetainHandling = 1
		sub.Subs[2].NoLocal = true
	}
	pkts = append(pkts, sub)
	for q := byte(0); q <= 2; q++ {
		p := &codec.Publish{QoS: q, Retain: q == 1, Topic: []byte("fz/t"), Payload: []byte("payload")}
		if q > 0 {
			p.PacketID = uint16(10 + q)
		}
		if v5 {
			p.Props.TopicAlias = 1
			p.Props.Set(codec.PropTopicAlias)
			p.Props.MessageExpiry = 5
			p.Props.Set(codec.PropMessageExpiry)
			p.Props.User = []codec.UserProperty{{Key: []byte("k"), Value: []byte("v")}}
			p.Props.ResponseTopic = []byte("fz/r")
			p.Props.Set(codec.PropResponseTopic)
		}
		pkts = append(pkts, p)
	}
	pkts = append(pkts,
		&codec.Ack{Kind: codec.PUBREL, PacketID: 12},
		&codec.Ack{Kind: codec.PUBACK, PacketID: 1},
		&codec.Ack{Kind: codec.PUBREC, PacketID: 2},
		&codec.Ack{Kind: codec.PUBCOMP, PacketID: 2},
		&codec.Pingreq{},
		&codec.Unsubscribe{PacketID: 2, Filters: [][]byte{[]byte("fz/#"), []byte("nothing")}},
	)
	d := &codec.Disconnect{}
	if v5 {
		d.Code = codec.DisconnectWithWill
		pkts = append(pkts, &codec.Auth{Code: codec.ReAuthenticate})
	}
	pkts = append(pkts, d)
	out := make([][]byte, len(pkts))
	for i, p := range pkts {
		out[i] = p.Append(nil, v)
	}
	return out
}

// biCorrupt returns a damaged copy of b: flipped bits, inserted, deleted,
// duplicated bytes, or a truncation.
func biCorrupt(r *rand.Rand, b []byte) []byte {
	b = append([]byte(nil), b...)
	for range 1 + r.IntN(4) {
		if len(b) == 0 {
			b = append(b, byte(r.Uint32()))
			continue
		}
		i := r.IntN(len(b))
		switch r.IntN(6) {
		case 0, 1:
			b[i] ^= 1 << r.IntN(8)
		case 2:
			b = append(b[:i], append([]byte{byte(r.Uint32())}, b[i:]...)...)
		case 3:
			b = append(b[:i], b[i+1:]...)
		case 4:
			b = append(b, b[i:min(len(b), i+1+r.IntN(16))]...)
		case 5:
			b = b[:i]
		}
	}
	return b
}

// biFuzzStream builds one connection's worth of input.
func biFuzzStream(r *rand.Rand, id int) []byte {
	v := []codec.Version{codec.V311, codec.V5}[r.IntN(2)]
	pkts := biFuzzPackets(v)
	switch r.IntN(4) {
	case 0: // random bytes
		b := make([]byte, r.IntN(512))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	case 1: // a valid CONNECT, then a corrupted session
		var b []byte
		for _, p := range pkts[1:] {
			if r.IntN(3) > 0 {
				b = append(b, p...)
			}
		}
		return append(biConnect(v, "fz-"+strconv.Itoa(id)), biCorrupt(r, b)...)
	case 2: // a valid CONNECT, then valid packets each corrupted now and then
		b := biConnect(v, "fz-"+strconv.Itoa(id))
		for range 1 + r.IntN(12) {
			p := pkts[1+r.IntN(len(pkts)-1)]
			if r.IntN(4) == 0 {
				p = biCorrupt(r, p)
			}
			b = append(b, p...)
		}
		return b
	default: // everything corrupted, CONNECT included
		return biCorrupt(r, bytes.Join(pkts, nil))
	}
}

func biOpenFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count open files: %v", err)
	}
	return len(es)
}

// Many connections at once send random bytes and corrupted packet
// streams, some after a valid CONNECT, some split across several writes.
// The broker must not crash (a panic would end this process), must close
// every connection once the client stops sending, must serve a normal
// client afterwards, and must hold no more goroutines or file descriptors
// than before.
func TestBadInputFuzzedConnections(t *testing.T) {
	s := startBrokerRetry(t, func(c *Config) {
		biConfig(c)
		c.Logger = slog.New(slog.DiscardHandler)
		c.MaxSessionExpiry = time.Second
	})
	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), biOpenFDs(t)

	const workers, perWorker = 50, 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(0x6a6e6e6574, uint64(w)))
			for i := range perWorker {
				stream := biFuzzStream(r, w*perWorker+i)
				c, err := net.Dial("tcp", s.Addr())
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				// Split the stream at up to three random points, so that
				// packets also arrive in pieces.
				for len(stream) > 0 {
					n := len(stream)
					if r.IntN(2) == 0 {
						n = 1 + r.IntN(len(stream))
					}
					if _, err := c.Write(stream[:n]); err != nil {
						break // closed by the broker
					}
					stream = stream[n:]
				}
				_ = c.(*net.TCPConn).CloseWrite()
				// The broker closes its side once it has read the end.
				// A reset is a close too; only a timeout is a leak.
				if _, err := io.Copy(io.Discard, c); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Errorf("worker %d stream %d: the broker kept the connection open 10s after EOF", w, i)
					}
				}
				_ = c.Close()
			}
		}()
	}
	wg.Wait()
	waitFor(t, "every fuzzed connection to close", func() bool { return s.stats.connections.Load() == 0 })

	// A normal client still connects and round-trips a QoS 1 message.
	rc := dialRaw(t, s, codec.V5)
	if ca := rc.connect("after-fuzz", nil); ca.Code != codec.Success {
		t.Fatalf("CONNECT after the fuzzing: %v", ca.Code)
	}
	rc.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("after/fuzz"), QoS: 1}}})
	if _, ok := rc.expect().(*codec.Suback); !ok {
		t.Fatal("no SUBACK after the fuzzing")
	}
	rc.send(&codec.Publish{QoS: 1, PacketID: 5, Topic: []byte("after/fuzz"), Payload: []byte("still here")})
	var gotAck, gotMsg bool
	for !gotAck || !gotMsg {
		switch p := rc.expect().(type) {
		case *codec.Ack:
			gotAck = p.Kind == codec.PUBACK && p.PacketID == 5
		case *codec.Publish:
			gotMsg = string(p.Payload) == "still here" && p.QoS == 1
			rc.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
		default:
			t.Fatalf("unexpected %v", p)
		}
	}
	rc.send(&codec.Disconnect{})
	_ = rc.c.Close()
	waitFor(t, "the last client to close", func() bool { return s.stats.connections.Load() == 0 })

	var g, fd int
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd = runtime.NumGoroutine(), biOpenFDs(t)
		if g <= baseG && fd <= baseFD {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d goroutines (baseline %d), %d open files (baseline %d)", g, baseG, fd, baseFD)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// biServerSends lists the packets a server may send to a client that did not
// ask for enhanced authentication.
var biServerSends = map[codec.Type]bool{
	codec.CONNACK: true, codec.PUBLISH: true, codec.PUBACK: true, codec.PUBREC: true, codec.PUBREL: true,
	codec.PUBCOMP: true, codec.SUBACK: true, codec.UNSUBACK: true, codec.PINGRESP: true, codec.DISCONNECT: true,
}

// biCheckServerStream checks everything a broker sent on one connection: it
// decodes as whole packets of one protocol version, each a packet a server
// may send, CONNACK first and at most once, DISCONNECT only last. A stream
// cut by a reset (truncated) may end inside a packet.
func biCheckServerStream(out []byte, truncated bool) error {
	var firstErr error
	for _, v := range []codec.Version{codec.V5, codec.V311} {
		err := biCheckStreamAs(out, v, truncated)
		if err == nil {
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return fmt.Errorf("%w; stream % x", firstErr, out)
}

func biCheckStreamAs(out []byte, v codec.Version, truncated bool) error {
	var types []codec.Type
	for off := 0; off < len(out); {
		p, n, err := codec.Decode(out[off:], v, 0)
		if errors.Is(err, codec.ErrIncomplete) && truncated {
			break
		}
		if err != nil {
			return fmt.Errorf("as %v: packet %d at byte %d: %w", v, len(types), off, err)
		}
		off += n
		types = append(types, p.Type())
	}
	for i, typ := range types {
		switch {
		case !biServerSends[typ]:
			return fmt.Errorf("as %v: the broker sent %v", v, typ)
		case typ == codec.CONNACK && i != 0:
			return fmt.Errorf("as %v: CONNACK as packet %d of %v", v, i, types)
		case typ == codec.DISCONNECT && i != len(types)-1:
			return fmt.Errorf("as %v: packets after DISCONNECT: %v", v, types)
		}
	}
	return nil
}

// FuzzServer sends the fuzz input on a fresh connection to a broker
// started once per fuzz run, in two writes split where the input says,
// optionally after a valid CONNECT. The broker must not crash, must close
// the connection once the input ends, must send only well-formed packets a
// server may send, and must still serve a normal client afterwards.
func FuzzServer(f *testing.F) {
	const (
		modeV5      = 1 // speak MQTT 5 (else 3.1.1)
		modeConnect = 2 // a valid CONNECT goes first
	)
	for _, row := range biRows {
		mode := byte(0)
		if row.v == codec.V5 {
			mode |= modeV5
		}
		if row.connect {
			mode |= modeConnect
		}
		f.Add(mode, uint16(len(row.send)/2), row.send)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 8 {
		f.Add(byte(i%4), uint16(r.IntN(64)), biFuzzStream(r, i))
	}
	s := startBrokerRetry(f, func(c *Config) {
		biConfig(c)
		// The fuzzing engine forbids logging from the target.
		c.Logger = slog.New(slog.DiscardHandler)
		c.MaxSessionExpiry = time.Second
	})
	f.Fuzz(func(t *testing.T, mode byte, split uint16, data []byte) {
		v := codec.V311
		if mode&modeV5 != 0 {
			v = codec.V5
		}
		if mode&modeConnect != 0 {
			data = append(biConnect(v, ""), data...)
		}
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		k := int(split) % (len(data) + 1)
		if _, err := c.Write(data[:k]); err == nil {
			_, _ = c.Write(data[k:])
		}
		_ = c.(*net.TCPConn).CloseWrite()
		out, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the broker kept the connection open 10s after the input ended; it sent % x", out)
		}
		if err := biCheckServerStream(out, err != nil); err != nil {
			t.Fatal(err)
		}

		rc := dialRaw(t, s, codec.V5)
		if ca := rc.connect("", nil); ca.Code != codec.Success {
			t.Fatalf("a normal client was refused after the input: %v", ca.Code)
		}
		if got := rc.ping(); len(got) != 0 {
			t.Fatalf("a fresh client got %v", got)
		}
	})
}

// A client closed for breaking the protocol did not disconnect normally,
// so its will is published [MQTT-3.1.2-8], in 3.1.1 and 5.0 alike.
func TestBadInputPublishesWill(t *testing.T) {
	t.Parallel()
	s := startBrokerRetry(t, func(c *Config) { c.Logger = slog.New(slog.DiscardHandler) })
	watcher := dialRaw(t, s, codec.V5)
	watcher.connect("will-watcher", nil)
	watcher.send(&codec.Subscribe{PacketID: 1, Subs: []codec.Subscription{{Filter: []byte("will/#"), QoS: 1}}})
	if _, ok := watcher.expect().(*codec.Suback); !ok {
		t.Fatal("no SUBACK")
	}
	for _, v := range []codec.Version{codec.V311, codec.V5} {
		rc := dialRaw(t, s, v)
		topic := "will/" + v.String()
		rc.connect("will-"+v.String(), func(p *codec.Connect) {
			p.WillFlag, p.WillQoS = true, 1
			p.WillTopic, p.WillPayload = []byte(topic), []byte("broke the protocol")
		})
		rc.write([]byte{0xd0, 0}) // PINGRESP from a client
		rc.expectClosed()
		p, ok := watcher.expect().(*codec.Publish)
		if !ok || string(p.Topic) != topic || string(p.Payload) != "broke the protocol" || p.QoS != 1 {
			t.Fatalf("%v: watcher got %+v, want the will on %s", v, p, topic)
		}
		watcher.send(&codec.Ack{Kind: codec.PUBACK, PacketID: p.PacketID})
	}
}

// A connection closed without a reply for breaking the protocol still
// counts as a protocol error: a first packet that is not CONNECT
// [MQTT-3.1.0-1], and a malformed 3.1.1 CONNECT.
func TestSilentClosesCounted(t *testing.T) {
	s := startBroker(t, nil)
	rc := dialRaw(t, s, codec.V311)
	rc.write([]byte{0xc0, 0}) // PINGREQ first
	if got := rc.expectClosed(); len(got) != 0 {
		t.Fatalf("got %v, want a silent close", got)
	}
	rc = dialRaw(t, s, codec.V311)
	rc.write([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 0, 0, 0}) // reserved flag set
	if got := rc.expectClosed(); len(got) != 0 {
		t.Fatalf("got %v, want a silent close", got)
	}
	waitFor(t, "both closes to be counted", func() bool { return s.stats.protocolErrors.Get() == 2 })
}
