package codec

import (
	"bytes"
	"errors"
	"testing"
)

// fixture is a packet as raw bytes, annotated byte by byte, used both to
// decode (bytes -> packet) and to encode (packet -> the same bytes).
type fixture struct {
	name string
	v    Version
	raw  []byte
	pkt  Packet
}

var fixtures = []fixture{
	{"v311 CONNECT", V311, []byte{
		0x10, 18, // CONNECT, remaining length 18
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		4,     // protocol level 3.1.1
		0xc2,  // flags: user name, password, clean session
		0, 30, // keep alive 30 s
		0, 1, 'c', // client id "c"
		0, 1, 'u', // user name "u"
		0, 0, // password ""
	}, &Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: V311, CleanStart: true, KeepAlive: 30,
		ClientID: []byte("c"), UsernameFlag: true, Username: []byte("u"), PasswordFlag: true, Password: []byte{}}},
	{"v31 CONNECT with will", V31, []byte{
		0x10, 22, // CONNECT, remaining length 22
		0, 6, 'M', 'Q', 'I', 's', 'd', 'p', // protocol name of 3.1
		3,     // protocol level 3.1
		0x2c,  // flags: will retain, will QoS 1, will flag
		0, 10, // keep alive 10 s
		0, 2, 'i', 'd', // client id "id"
		0, 1, 'w', // will topic "w"
		0, 1, 'x', // will payload "x"
	}, &Connect{ProtocolName: []byte("MQIsdp"), ProtocolVersion: V31, KeepAlive: 10, ClientID: []byte("id"),
		WillFlag: true, WillQoS: 1, WillRetain: true, WillTopic: []byte("w"), WillPayload: []byte("x")}},
	{"v5 CONNECT", V5, []byte{
		0x10, 18, // CONNECT, remaining length 18
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		5,    // protocol level 5
		0x02, // flags: clean start
		0, 0, // keep alive 0 (off)
		5,                 // property length 5
		0x11, 0, 0, 0, 60, // session expiry interval 60 s
		0, 0, // client id "" (the server assigns one)
	}, &Connect{ProtocolName: []byte("MQTT"), ProtocolVersion: V5, CleanStart: true,
		Props: Properties{Present: 1 << PropSessionExpiry, SessionExpiry: 60}, ClientID: []byte{}}},
	{"v311 CONNACK", V311, []byte{
		0x20, 2, // CONNACK, remaining length 2
		1, // session present
		0, // accepted
	}, &Connack{SessionPresent: true}},
	{"v5 CONNACK", V5, []byte{
		0x20, 6, // CONNACK, remaining length 6
		0,           // no session present
		0x00,        // success
		3,           // property length 3
		0x21, 0, 10, // receive maximum 10
	}, &Connack{Props: Properties{Present: 1 << PropReceiveMaximum, ReceiveMaximum: 10}}},
	{"v311 PUBLISH QoS 1", V311, []byte{
		0x33, 9, // PUBLISH, QoS 1, retain; remaining length 9
		0, 3, 'a', '/', 'b', // topic "a/b"
		0, 7, // packet id 7
		'h', 'i', // payload
	}, &Publish{QoS: 1, Retain: true, Topic: []byte("a/b"), PacketID: 7, Payload: []byte("hi")}},
	{"v5 PUBLISH with properties", V5, []byte{
		0x3a, 22, // PUBLISH, DUP, QoS 1; remaining length 22
		0, 1, 't', // topic "t"
		0, 1, // packet id 1
		14,      // property length 14
		0x01, 1, // payload format: UTF-8
		0x23, 0, 2, // topic alias 2
		0x0b, 5, // subscription identifier 5
		0x26, 0, 1, 'k', 0, 1, 'v', // user property k=v
		'o', 'k', // payload
	}, &Publish{Dup: true, QoS: 1, Topic: []byte("t"), PacketID: 1,
		Props: Properties{Present: 1<<PropPayloadFormat | 1<<PropTopicAlias, PayloadFormat: 1, TopicAlias: 2,
			User: []UserProperty{{[]byte("k"), []byte("v")}}, SubscriptionIDs: []uint32{5}}, Payload: []byte("ok")}},
	{"v5 PUBACK short form", V5, []byte{
		0x40, 2, // PUBACK, remaining length 2
		0, 9, // packet id 9; success is implied [MQTT-3.4.2-1]
	}, &Ack{Kind: PUBACK, PacketID: 9}},
	{"v5 PUBREC with reason", V5, []byte{
		0x50, 3, // PUBREC, remaining length 3
		0, 9, // packet id 9
		0x10, // no matching subscribers
	}, &Ack{Kind: PUBREC, PacketID: 9, Code: NoMatchingSubscribers}},
	{"PUBREL", V311, []byte{
		0x62, 2, // PUBREL with its mandatory flags 0010
		0x01, 0x00, // packet id 256
	}, &Ack{Kind: PUBREL, PacketID: 256}},
	{"v5 SUBSCRIBE", V5, []byte{
		0x82, 10, // SUBSCRIBE with flags 0010, remaining length 10
		0, 3, // packet id 3
		2,       // property length 2
		0x0b, 1, // subscription identifier 1
		0, 2, 'a', '/', // filter "a/"
		0x2d, // options: retain handling 2, retain as published, no local, QoS 1
	}, &Subscribe{PacketID: 3, Props: Properties{SubscriptionIDs: []uint32{1}},
		Subs: []Subscription{{Filter: []byte("a/"), QoS: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 2}}}},
	{"v311 SUBACK", V311, []byte{
		0x90, 4, // SUBACK, remaining length 4
		0, 3, // packet id 3
		0x01, // granted QoS 1
		0x80, // failure
	}, &Suback{PacketID: 3, Codes: []ReasonCode{GrantedQoS1, V3SubackFailure}}},
	{"v311 UNSUBSCRIBE", V311, []byte{
		0xa2, 5, // UNSUBSCRIBE with flags 0010, remaining length 5
		0, 4, // packet id 4
		0, 1, '#', // filter "#"
	}, &Unsubscribe{PacketID: 4, Filters: [][]byte{[]byte("#")}}},
	{"v5 UNSUBACK", V5, []byte{
		0xb0, 4, // UNSUBACK, remaining length 4
		0, 4, // packet id 4
		0,    // property length 0
		0x11, // no subscription existed
	}, &Unsuback{PacketID: 4, Codes: []ReasonCode{NoSubscriptionExisted}}},
	{"PINGREQ", V311, []byte{0xc0, 0}, &Pingreq{}},
	{"PINGRESP", V311, []byte{0xd0, 0}, &Pingresp{}},
	{"v311 DISCONNECT", V311, []byte{0xe0, 0}, &Disconnect{}},
	{"v5 DISCONNECT with will", V5, []byte{
		0xe0, 1, // DISCONNECT, remaining length 1
		0x04, // disconnect with will message
	}, &Disconnect{Code: DisconnectWithWill}},
	{"v5 AUTH", V5, []byte{
		0xf0, 8, // AUTH, remaining length 8
		0x18,                      // continue authentication
		6,                         // property length 6
		0x15, 0, 3, 'k', 'r', 'b', // authentication method "krb"
	}, &Auth{Code: ContinueAuthentication, Props: Properties{Present: 1 << PropAuthMethod, AuthMethod: []byte("krb")}}},
}

func TestFixtures(t *testing.T) {
	for _, f := range fixtures {
		p, n, err := Decode(f.raw, f.v, 0)
		if err != nil {
			t.Errorf("%s: decode: %v", f.name, err)
			continue
		}
		if n != len(f.raw) || !equalPackets(p, f.pkt) {
			t.Errorf("%s: decoded %+v (%d bytes), want %+v", f.name, p, n, f.pkt)
		}
		if enc := f.pkt.Append(nil, f.v); !bytes.Equal(enc, f.raw) {
			t.Errorf("%s: encoded\n% x\nwant\n% x", f.name, enc, f.raw)
		}
	}
}

// malformedCases each break one rule of the wire format. code is the reason
// code the decoder must report, rule the normative statement it checks.
var malformedCases = []struct {
	name string
	v    Version
	raw  []byte
	code ReasonCode
	rule string
}{
	{"remaining length of 5 bytes", V311, []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, MalformedPacket, "MQTT-1.5.5-1"},
	{"reserved packet type 0", V311, []byte{0x00, 0}, MalformedPacket, "MQTT-2.1.2"},
	{"PINGREQ with flags", V311, []byte{0xc1, 0}, MalformedPacket, "MQTT-2.1.3-1"},
	{"PUBREL with flags 0000", V5, []byte{0x60, 2, 0, 1}, MalformedPacket, "MQTT-2.1.3-1"},
	{"SUBSCRIBE with flags 0000", V311, []byte{0x80, 6, 0, 1, 0, 1, 'a', 0}, MalformedPacket, "MQTT-2.1.3-1"},
	{"UNSUBSCRIBE with flags 0011", V311, []byte{0xa3, 5, 0, 1, 0, 1, 'a'}, MalformedPacket, "MQTT-2.1.3-1"},
	{"PUBLISH QoS 3", V311, []byte{0x36, 5, 0, 1, 't', 0, 1}, MalformedPacket, "MQTT-3.3.1-4"},
	{"PUBLISH QoS 0 with DUP", V311, []byte{0x38, 3, 0, 1, 't'}, MalformedPacket, "MQTT-3.3.1-2"},
	{"PUBLISH wildcard +", V311, []byte{0x30, 5, 0, 3, 'a', '/', '+'}, TopicNameInvalid, "MQTT-3.3.2-2"},
	{"PUBLISH wildcard #", V5, []byte{0x30, 4, 0, 1, '#', 0}, TopicNameInvalid, "MQTT-3.3.2-2"},
	{"PUBLISH packet id 0", V311, []byte{0x32, 5, 0, 1, 't', 0, 0}, ProtocolError, "MQTT-2.2.1-3"},
	{"PUBLISH topic with U+0000", V311, []byte{0x30, 4, 0, 2, 'a', 0}, MalformedPacket, "MQTT-1.5.4-2"},
	{"PUBLISH topic not UTF-8", V311, []byte{0x30, 4, 0, 2, 0xc3, 0x28}, MalformedPacket, "MQTT-1.5.4-1"},
	{"PUBLISH topic with a surrogate", V311, []byte{0x30, 5, 0, 3, 0xed, 0xa0, 0x80}, MalformedPacket, "MQTT-1.5.4-1"},
	{"PUBLISH topic longer than the packet", V311, []byte{0x30, 3, 0, 5, 'a'}, MalformedPacket, ""},
	{"v5 PUBLISH empty topic without alias", V5, []byte{0x30, 3, 0, 0, 0}, ProtocolError, ""},
	{"v311 PUBLISH empty topic", V311, []byte{0x30, 2, 0, 0}, TopicNameInvalid, "MQTT-4.7.3-1"},
	{"v5 PUBLISH duplicate property", V5, []byte{0x30, 8, 0, 1, 't', 4, 0x01, 0, 0x01, 0}, ProtocolError, ""},
	{"v5 PUBLISH property not allowed", V5, []byte{0x30, 6, 0, 1, 't', 2, 0x17, 1}, MalformedPacket, ""},
	{"v5 PUBLISH payload format 2", V5, []byte{0x30, 6, 0, 1, 't', 2, 0x01, 2}, ProtocolError, ""},
	{"v5 PUBLISH subscription id 0", V5, []byte{0x30, 6, 0, 1, 't', 2, 0x0b, 0}, ProtocolError, "MQTT-3.8.2-1"},
	{"v5 PUBLISH properties past the end", V5, []byte{0x30, 5, 0, 1, 't', 9, 0x01}, MalformedPacket, ""},
	{"v5 PUBLISH response topic with wildcard", V5, []byte{0x30, 9, 0, 1, 't', 5, 0x08, 0, 2, 'a', '#'}, ProtocolError, "MQTT-3.3.2-14"},
	{"CONNECT reserved flag", V311, connectRaw(4, 0x03), MalformedPacket, "MQTT-3.1.2-3"},
	{"CONNECT will QoS 3", V311, connectRaw(4, 0x1e), MalformedPacket, "MQTT-3.1.2-12"},
	{"CONNECT will QoS without will", V311, connectRaw(4, 0x0a), MalformedPacket, "MQTT-3.1.2-11"},
	{"CONNECT will retain without will", V311, connectRaw(4, 0x22), MalformedPacket, "MQTT-3.1.2-13"},
	{"v311 CONNECT password without user name", V311, connectRaw(4, 0x42), MalformedPacket, "MQTT-3.1.2-22"},
	{"CONNECT protocol level 6", V311, connectRaw(6, 0x02), UnsupportedProtocolVersion, "MQTT-3.1.2-2"},
	{"CONNECT name MQTT with level 3", V311, connectRaw(3, 0x02), UnsupportedProtocolVersion, "MQTT-3.1.2-1"},
	{"CONNECT trailing bytes", V311, append(connectRaw(4, 0x02)[:1:1], append([]byte{13}, append(connectRaw(4, 0x02)[2:], 'x')...)...), MalformedPacket, ""},
	{"v5 CONNECT receive maximum 0", V5, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x21, 0, 0, 0, 0}, ProtocolError, ""},
	{"v5 CONNECT maximum packet size 0", V5, []byte{0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 5, 0x27, 0, 0, 0, 0, 0, 0}, ProtocolError, ""},
	{"v5 CONNECT request problem information 2", V5, []byte{0x10, 15, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 2, 0x17, 2, 0, 0}, ProtocolError, ""},
	{"v5 CONNECT topic alias property", V5, []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x23, 0, 1, 0, 0}, MalformedPacket, ""},
	{"v5 CONNECT session expiry twice", V5, []byte{0x10, 23, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2, 0, 0}, ProtocolError, ""},
	{"CONNACK reserved flags", V311, []byte{0x20, 2, 2, 0}, MalformedPacket, "MQTT-3.2.2-1"},
	{"SUBSCRIBE without filters", V311, []byte{0x82, 2, 0, 1}, ProtocolError, "MQTT-3.8.3-3"},
	{"SUBSCRIBE packet id 0", V311, []byte{0x82, 6, 0, 0, 0, 1, 'a', 0}, ProtocolError, "MQTT-2.2.1-3"},
	{"v311 SUBSCRIBE reserved option bits", V311, []byte{0x82, 6, 0, 1, 0, 1, 'a', 0x04}, MalformedPacket, "MQTT-3.8.3-4"},
	{"SUBSCRIBE QoS 3", V311, []byte{0x82, 6, 0, 1, 0, 1, 'a', 3}, MalformedPacket, "MQTT-3.8.3-4"},
	{"v5 SUBSCRIBE reserved option bits", V5, []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0x40}, MalformedPacket, "MQTT-3.8.3-5"},
	{"v5 SUBSCRIBE retain handling 3", V5, []byte{0x82, 7, 0, 1, 0, 0, 1, 'a', 0x30}, ProtocolError, ""},
	{"v5 SUBSCRIBE no local on a shared subscription", V5, []byte{0x82, 15, 0, 1, 0, 0, 9, '$', 's', 'h', 'a', 'r', 'e', '/', 'g', '/', 0x04}, ProtocolError, "MQTT-3.8.3-4"},
	{"v5 SUBSCRIBE two subscription identifiers", V5, []byte{0x82, 11, 0, 1, 4, 0x0b, 1, 0x0b, 2, 0, 1, 'a', 0}, ProtocolError, ""},
	{"SUBSCRIBE filter cut short", V311, []byte{0x82, 5, 0, 1, 0, 1, 'a'}, MalformedPacket, ""},
	{"UNSUBSCRIBE without filters", V311, []byte{0xa2, 2, 0, 1}, ProtocolError, "MQTT-3.10.3-2"},
	{"PUBACK packet id 0", V311, []byte{0x40, 2, 0, 0}, ProtocolError, "MQTT-2.2.1-3"},
	{"v311 PUBACK too long", V311, []byte{0x40, 3, 0, 1, 0}, MalformedPacket, ""},
	{"v5 PUBREL bad reason code", V5, []byte{0x62, 3, 0, 1, 0x10}, ProtocolError, ""},
	{"PINGREQ with a body", V311, []byte{0xc0, 1, 0}, MalformedPacket, ""},
	{"v311 DISCONNECT with a body", V311, []byte{0xe0, 1, 0}, MalformedPacket, ""},
	{"v5 DISCONNECT bad reason code", V5, []byte{0xe0, 1, 0x01}, ProtocolError, ""},
	{"AUTH in 3.1.1", V311, []byte{0xf0, 0}, MalformedPacket, ""},
}

// connectRaw is a minimal CONNECT with the given level and flags.
func connectRaw(level, flags byte) []byte {
	return []byte{
		0x10, 12, // CONNECT, remaining length 12
		0, 4, 'M', 'Q', 'T', 'T', // protocol name
		level, flags,
		0, 0, // keep alive
		0, 0, // client id ""
	}
}

func TestMalformed(t *testing.T) {
	for _, c := range malformedCases {
		_, _, err := Decode(c.raw, c.v, 0)
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%s: got %v, want *Error", c.name, err)
			continue
		}
		if e.Code != c.code || e.Rule != c.rule {
			t.Errorf("%s: got %s [%s] (%v), want %s [%s]", c.name, e.Code, e.Rule, err, c.code, c.rule)
		}
	}
}

// A v5 CONNECT that fails after its level still reports the level, so the
// server can answer in v5 form.
func TestConnectReportsVersionOnError(t *testing.T) {
	raw := []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 0, 3, 0x21, 0, 0, 0, 0}
	h, n, _ := DecodeFixedHeader(raw)
	var p Connect
	if err := p.Decode(h, raw[n:], 0); err == nil || p.ProtocolVersion != V5 {
		t.Fatalf("err %v, version %v", err, p.ProtocolVersion)
	}
}
