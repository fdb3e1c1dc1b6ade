package codec

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

var versions = []Version{V31, V311, V5}

// fullProps sets every property allowed by mask to a distinctive value.
func fullProps(mask uint64) Properties {
	var p Properties
	all := Properties{
		PayloadFormat: 1, MessageExpiry: 3600, ContentType: []byte("text/plain"),
		ResponseTopic: []byte("reply/here"), CorrelationData: []byte{0, 1, 2},
		SessionExpiry: 120, AssignedClientID: []byte("auto-1"), ServerKeepAlive: 30,
		AuthMethod: []byte("SCRAM-SHA-1"), AuthData: []byte{9, 9}, RequestProblemInfo: 1,
		WillDelay: 5, RequestResponseInfo: 1, ResponseInfo: []byte("resp"),
		ServerReference: []byte("other:1883"), ReasonString: []byte("because"),
		ReceiveMaximum: 20, TopicAliasMaximum: 10, TopicAlias: 3, MaximumQoS: 1,
		RetainAvailable: 1, MaximumPacketSize: 1 << 20, WildcardSubAvailable: 1,
		SubIDAvailable: 1, SharedSubAvailable: 1,
	}
	p = all
	p.Present = 0
	for _, id := range single {
		if mask&(1<<id) != 0 {
			p.Set(id)
		}
	}
	// Zero the fields that are not present so that decode(encode(p)) == p.
	clean := Properties{Present: p.Present}
	for _, id := range single {
		if p.Has(id) {
			copyField(&clean, &all, id)
		}
	}
	if mask&(1<<PropSubscriptionID) != 0 {
		clean.SubscriptionIDs = []uint32{1, 268435455}
		if mask == maskSubscribe {
			clean.SubscriptionIDs = []uint32{77}
		}
	}
	if mask&(1<<PropUser) != 0 {
		clean.User = []UserProperty{{[]byte("k"), []byte("v")}, {[]byte("k"), []byte("v2")}, {[]byte(""), []byte("")}}
	}
	return clean
}

func copyField(dst, src *Properties, id PropID) {
	dv := reflect.ValueOf(dst).Elem()
	sv := reflect.ValueOf(src).Elem()
	name := map[PropID]string{
		PropPayloadFormat: "PayloadFormat", PropMessageExpiry: "MessageExpiry", PropContentType: "ContentType",
		PropResponseTopic: "ResponseTopic", PropCorrelationData: "CorrelationData", PropSessionExpiry: "SessionExpiry",
		PropAssignedClientID: "AssignedClientID", PropServerKeepAlive: "ServerKeepAlive", PropAuthMethod: "AuthMethod",
		PropAuthData: "AuthData", PropRequestProblemInfo: "RequestProblemInfo", PropWillDelay: "WillDelay",
		PropRequestResponseInfo: "RequestResponseInfo", PropResponseInfo: "ResponseInfo",
		PropServerReference: "ServerReference", PropReasonString: "ReasonString", PropReceiveMaximum: "ReceiveMaximum",
		PropTopicAliasMaximum: "TopicAliasMaximum", PropTopicAlias: "TopicAlias", PropMaximumQoS: "MaximumQoS",
		PropRetainAvailable: "RetainAvailable", PropMaximumPacketSize: "MaximumPacketSize",
		PropWildcardSubAvailable: "WildcardSubAvailable", PropSubIDAvailable: "SubIDAvailable",
		PropSharedSubAvailable: "SharedSubAvailable",
	}[id]
	dv.FieldByName(name).Set(sv.FieldByName(name))
}

// samples returns one packet of every type, filled in as version v allows.
func samples(v Version) []Packet {
	v5 := v == V5
	props := func(mask uint64) Properties {
		if v5 {
			return fullProps(mask)
		}
		return Properties{}
	}
	name := []byte("MQTT")
	if v == V31 {
		name = []byte("MQIsdp")
	}
	ps := []Packet{
		&Connect{ProtocolName: name, ProtocolVersion: v, CleanStart: true, KeepAlive: 60,
			Props: props(maskConnect), ClientID: []byte("client-1")},
		&Connect{ProtocolName: name, ProtocolVersion: v, KeepAlive: 0, Props: props(maskConnect),
			ClientID: []byte("c2"), WillFlag: true, WillQoS: 2, WillRetain: true, WillProps: props(maskWill),
			WillTopic: []byte("last/will"), WillPayload: []byte("gone"), UsernameFlag: true,
			Username: []byte("user"), PasswordFlag: true, Password: []byte{0, 0xff, 'p'}},
		&Connack{SessionPresent: v != V31, Code: Success, Props: props(maskConnack)},
		&Publish{Topic: []byte("a/b/c"), Payload: []byte("hello")},
		&Publish{Dup: true, QoS: 1, Retain: true, Topic: []byte("a/b"), PacketID: 7, Props: props(maskPublish), Payload: []byte{}},
		&Publish{QoS: 2, Topic: []byte("x"), PacketID: 65535, Props: props(maskPublish), Payload: bytes.Repeat([]byte{0xAB}, 300)},
		&Ack{Kind: PUBACK, PacketID: 1},
		&Ack{Kind: PUBREC, PacketID: 2},
		&Ack{Kind: PUBREL, PacketID: 3},
		&Ack{Kind: PUBCOMP, PacketID: 4},
		&Subscribe{PacketID: 9, Props: props(maskSubscribe), Subs: []Subscription{
			{Filter: []byte("a/+/c"), QoS: 1}, {Filter: []byte("#"), QoS: 2}, {Filter: []byte("$share/g/t"), QoS: 0}}},
		&Suback{PacketID: 9, Props: props(maskAck), Codes: []ReasonCode{GrantedQoS1, GrantedQoS2, GrantedQoS0}},
		&Unsubscribe{PacketID: 10, Props: props(maskUnsubscribe), Filters: [][]byte{[]byte("a/+/c"), []byte("#")}},
		&Pingreq{},
		&Pingresp{},
		&Disconnect{},
	}
	if v5 {
		ps = append(ps,
			&Connack{Code: NotAuthorized},
			&Ack{Kind: PUBACK, PacketID: 5, Code: NoMatchingSubscribers},
			&Ack{Kind: PUBREC, PacketID: 6, Code: QuotaExceeded, Props: props(maskAck)},
			&Ack{Kind: PUBREL, PacketID: 7, Code: PacketIdentifierNotFound, Props: props(maskAck)},
			&Ack{Kind: PUBCOMP, PacketID: 8, Code: Success, Props: props(maskAck)},
			&Subscribe{PacketID: 11, Subs: []Subscription{
				{Filter: []byte("a"), QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2}}},
			&Suback{PacketID: 11, Codes: []ReasonCode{TopicFilterInvalid, NotAuthorized}},
			&Unsuback{PacketID: 12, Props: props(maskAck), Codes: []ReasonCode{Success, NoSubscriptionExisted}},
			&Disconnect{Code: SessionTakenOver},
			&Disconnect{Code: ServerShuttingDown, Props: props(maskDisconnect)},
			&Auth{},
			&Auth{Code: ContinueAuthentication, Props: props(maskAuth)},
			&Publish{Topic: nil, QoS: 1, PacketID: 3, Props: Properties{Present: 1 << PropTopicAlias, TopicAlias: 4}, Payload: []byte("p")},
		)
	} else {
		ps = append(ps, &Unsuback{PacketID: 10}, &Connack{Code: V3BadUsernameOrPassword}, &Suback{PacketID: 1, Codes: []ReasonCode{V3SubackFailure}})
	}
	return ps
}

// equalPackets compares packets treating nil and empty slices alike.
func equalPackets(a, b Packet) bool {
	return reflect.DeepEqual(normalize(reflect.ValueOf(a)).Interface(), normalize(reflect.ValueOf(b)).Interface())
}

func normalize(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Elem().Type())
		n.Elem().Set(normalize(v.Elem()))
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		for i := 0; i < v.NumField(); i++ {
			n.Field(i).Set(normalize(v.Field(i)))
		}
		return n
	case reflect.Slice:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			n.Index(i).Set(normalize(v.Index(i)))
		}
		return n
	}
	return v
}

func TestRoundTrip(t *testing.T) {
	for _, v := range versions {
		for _, p := range samples(v) {
			if p.Type() == AUTH && v != V5 {
				continue
			}
			enc := p.Append([]byte("prefix"), v)
			if !bytes.HasPrefix(enc, []byte("prefix")) {
				t.Fatalf("v%d %s: Append overwrote dst", v, p.Type())
			}
			enc = enc[len("prefix"):]
			if got := p.Size(v); got != len(enc) {
				t.Errorf("v%d %s: Size %d, encoded %d bytes", v, p.Type(), got, len(enc))
			}
			q, n, err := Decode(enc, v, 0)
			if err != nil {
				t.Errorf("v%d %s: decode: %v\n% x", v, p.Type(), err, enc)
				continue
			}
			if n != len(enc) {
				t.Errorf("v%d %s: consumed %d of %d", v, p.Type(), n, len(enc))
			}
			if !equalPackets(p, q) {
				t.Errorf("v%d %s: round trip differs\n in: %+v\nout: %+v", v, p.Type(), p, q)
			}
			// Every proper prefix is incomplete, never malformed.
			for i := 0; i < len(enc); i++ {
				if _, _, err := Decode(enc[:i], v, 0); err != ErrIncomplete {
					t.Errorf("v%d %s: prefix of %d bytes: got %v, want ErrIncomplete", v, p.Type(), i, err)
					break
				}
			}
		}
	}
}

func TestDecodeIntoReusesCapacity(t *testing.T) {
	src := samples(V5)[4].(*Publish)
	enc := src.Append(nil, V5)
	h, n, err := DecodeFixedHeader(enc)
	if err != nil {
		t.Fatal(err)
	}
	var p Publish
	if err := p.Decode(h, enc[n:], V5); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := p.Decode(h, enc[n:], V5); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("decoding again allocated %v times", allocs)
	}
	if !equalPackets(src, &p) {
		t.Errorf("got %+v", p)
	}
}

func TestPacketTooLarge(t *testing.T) {
	enc := (&Publish{Topic: []byte("t"), Payload: make([]byte, 100)}).Append(nil, V311)
	_, _, err := Decode(enc, V311, 50)
	if CodeOf(err) != PacketTooLarge {
		t.Fatalf("got %v, want packet too large", err)
	}
	// The size is refused from the header alone, before the body arrives.
	_, _, err = Decode(enc[:3], V311, 50)
	if CodeOf(err) != PacketTooLarge {
		t.Fatalf("header only: got %v, want packet too large", err)
	}
	if _, _, err := Decode(enc, V311, len(enc)); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
}

func TestVarint(t *testing.T) {
	for _, x := range []int{0, 1, 127, 128, 16383, 16384, 2097151, 2097152, MaxRemainingLength} {
		b := AppendVarint(nil, x)
		if len(b) != VarintSize(x) {
			t.Errorf("%d: size %d, encoded %d", x, VarintSize(x), len(b))
		}
		y, n, err := decodeVarint(b)
		if err != nil || y != x || n != len(b) {
			t.Errorf("%d: decoded %d, %d, %v", x, y, n, err)
		}
	}
}

func TestErrorMatching(t *testing.T) {
	_, _, err := Decode([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, V5, 0)
	if !errors.Is(err, MalformedPacket) {
		t.Fatalf("errors.Is(%v, MalformedPacket) = false", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Rule != "MQTT-1.5.5-1" {
		t.Fatalf("rule: %v", err)
	}
	if CodeOf(errors.New("x")) != UnspecifiedError || CodeOf(QuotaExceeded) != QuotaExceeded {
		t.Fatal("CodeOf")
	}
}

func TestTopicValidation(t *testing.T) {
	names := map[string]bool{"a/b": true, "/": true, "a//b": true, "$SYS/x": true, "": false, "a/+": false, "#": false, "a#": false}
	for n, ok := range names {
		if err := ValidateTopicName([]byte(n)); (err == nil) != ok {
			t.Errorf("ValidateTopicName(%q) = %v, want ok=%v", n, err, ok)
		}
	}
	filters := map[string]bool{
		"sport/tennis/player1/#": true, "sport/#": true, "#": true, "+": true, "+/tennis/#": true,
		"sport/+/player1": true, "/+": true, "+/+": true, "a//b": true, "$share/g/a/#": true, "$share/g/#": true,
		"sport/tennis#": false, "sport/tennis/#/ranking": false, "sport+": false, "": false, "a/b+": false,
		"+a": false, "$share/g": false, "$share//a": false, "$share/g+/a": false, "$share/g/": false, "$share/#/a": false,
	}
	for f, ok := range filters {
		err := ValidateTopicFilter([]byte(f))
		if (err == nil) != ok {
			t.Errorf("ValidateTopicFilter(%q) = %v, want ok=%v", f, err, ok)
		}
		if err != nil && CodeOf(err) != TopicFilterInvalid {
			t.Errorf("ValidateTopicFilter(%q) code %v", f, CodeOf(err))
		}
	}
	g, f, ok := SplitShared([]byte("$share/grp/a/b"))
	if !ok || string(g) != "grp" || string(f) != "a/b" {
		t.Errorf("SplitShared = %q %q %v", g, f, ok)
	}
	if _, _, ok := SplitShared([]byte("$sharex/a")); ok {
		t.Error("SplitShared accepted $sharex")
	}
}

// MQTT 3.1 has no session present flag: a resumed session's CONNACK keeps
// the byte zero.
func TestConnackV31NoSessionPresent(t *testing.T) {
	got := (&Connack{SessionPresent: true}).Append(nil, V31)
	if want := []byte{0x20, 2, 0, 0}; !bytes.Equal(got, want) {
		t.Fatalf("v3.1 CONNACK = % x, want % x", got, want)
	}
	got = (&Connack{SessionPresent: true}).Append(nil, V311)
	if want := []byte{0x20, 2, 1, 0}; !bytes.Equal(got, want) {
		t.Fatalf("v3.1.1 CONNACK = % x, want % x", got, want)
	}
}
