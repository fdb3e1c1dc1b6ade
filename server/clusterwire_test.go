package server

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/gannetmq/gannet/codec"
	"github.com/gannetmq/gannet/fanout"
	"github.com/gannetmq/gannet/interlink"
)

func testMessage() *message {
	p := codec.Publish{Topic: []byte("plant/7/temp"), Payload: []byte(`{"t":21.5}`), QoS: 1, Retain: true}
	p.Props.ContentType = []byte("application/json")
	p.Props.Set(codec.PropContentType)
	p.Props.CorrelationData = []byte{1, 2, 3}
	p.Props.Set(codec.PropCorrelationData)
	p.Props.User = []codec.UserProperty{{Key: []byte("k"), Value: []byte("v")}}
	p.Props.MessageExpiry = 60
	p.Props.Set(codec.PropMessageExpiry)
	return newMessage(&p, "pub-1", 1_000)
}

// The bodies peers exchange decode to what was encoded.
func TestClusterWireRoundTrip(t *testing.T) {
	m := testMessage()
	m.origin = 7<<32 | 99
	m.stamp = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	f := &forward{plain: true, groups: []string{"$share/g/plant/+/temp"}, skip: []string{"dev-1", "dev-2"}}
	b := appendForward(nil, f, appendMessage(nil, m, 1_000, true))
	gf, gm := &forward{}, &message{}
	if err := decodeForward(b, 2_000, gf, gm); err != nil {
		t.Fatal(err)
	}
	if !gf.plain || len(gf.groups) != 1 || gf.groups[0] != f.groups[0] || len(gf.skip) != 2 ||
		!slices.Contains(gf.skip, "dev-2") || slices.Contains(gf.skip, "dev-3") {
		t.Fatalf("forward header %+v", gf)
	}
	// Without a skip list none is read, and the one decoded before goes;
	// for a peer that reads no routing time, the message has none.
	plain := appendForward(nil, &forward{plain: true}, appendMessage(nil, m, 1_000, false))
	var pm message
	if err := decodeForward(plain, 2_000, gf, &pm); err != nil || len(gf.skip) != 0 || plain[1] != 1 || pm.stamp != 0 {
		t.Fatalf("forward without skip list or routing time: %+v, stamp %d, %v", gf, pm.stamp, err)
	}
	if !bytes.Equal(gm.topic, m.topic) || !bytes.Equal(gm.payload, m.payload) || gm.qos != 1 || !gm.retain ||
		gm.from != "pub-1" || !bytes.Equal(gm.props.ContentType, m.props.ContentType) ||
		!bytes.Equal(gm.props.CorrelationData, m.props.CorrelationData) || len(gm.props.User) != 1 {
		t.Fatalf("message %+v", gm)
	}
	// The decoded message aliases the frame; its own copy does not.
	own := gm.own()
	clear(b)
	if own.from != "pub-1" || string(own.topic) != "plant/7/temp" || string(own.payload) != `{"t":21.5}` ||
		string(own.props.ContentType) != "application/json" || string(own.props.User[0].Value) != "v" ||
		own.expiresAt != gm.expiresAt || own.qos != 1 || !own.retain || own.origin != m.origin || own.stamp != m.stamp {
		t.Fatalf("owned copy %+v", own)
	}
	// Expiry travels as the milliseconds left (60 s, sent at 1,000 ns)
	// and is re-based on the receiver's clock (2,000 ns).
	if want := int64(2_000) + int64(60*time.Second); gm.expiresAt != want {
		t.Fatalf("expiry %d, want %d", gm.expiresAt, want)
	}

	m.stamp = 42
	rm, err := decodeRetained(appendRetained(nil, m, 1_000), 1_000)
	if err != nil || rm.stamp != 42 || !bytes.Equal(rm.payload, m.payload) {
		t.Fatalf("retained: %+v %v", rm, err)
	}

	mv := &movedSession{id: "dev1", since: 77, online: true, expiry: time.Hour,
		subs: map[string]fanout.Options{"a/+": {QoS: 2, NoLocal: true, SubID: 9}},
		msgs: []movedMsg{{msg: m, qos: 1, pid: 5, subIDs: []uint32{9}}, {msg: m, qos: 2, released: false}},
		rx:   []uint16{3, 4}}
	got, err := decodeMoved(&wireReader{b: appendMoved(nil, mv, 1_000, true)}, 1_000)
	if err != nil {
		t.Fatal(err)
	}
	if got.id != "dev1" || got.since != 77 || !got.online || got.expiry != time.Hour || got.subs["a/+"] != mv.subs["a/+"] ||
		len(got.msgs) != 2 || got.msgs[0].msg.origin != m.origin || got.msgs[0].pid != 5 || got.msgs[0].subIDs[0] != 9 || got.msgs[1].qos != 2 || len(got.rx) != 2 {
		t.Fatalf("moved session %+v", got)
	}

	// A takeover answer carries the send marks after the session.
	ans := appendSentMarks(appendMoved(append(binary.AppendUvarint(nil, 12), 1), mv, 1_000, true), 99, []uint64{0, 7, 300})
	id, present, got, err := decodeSessionAnswer(ans, "n2", 1_000)
	want := []interlink.PeerPosition{{Peer: "n2", Position: interlink.Position{Epoch: 99, Lane: 1, Seq: 7}},
		{Peer: "n2", Position: interlink.Position{Epoch: 99, Lane: 2, Seq: 300}}}
	if err != nil || id != 12 || present != 1 || got.id != "dev1" || !slices.Equal(got.before, want) {
		t.Fatalf("takeover answer: id %d present %d %+v %v", id, present, got, err)
	}
	// One without (a node that does not send them) has none.
	if _, _, got, err := decodeSessionAnswer(appendMoved(append(binary.AppendUvarint(nil, 12), 1), mv, 1_000, true), "n2", 1_000); err != nil || got.before != nil {
		t.Fatalf("takeover answer without marks: %+v %v", got, err)
	}
}

// FuzzClusterRecords feeds arbitrary bodies to every decoder of what peers
// send; none may panic, and a decoded message must be one a client could
// have published.
func FuzzClusterRecords(f *testing.F) {
	m := testMessage()
	f.Add(appendForward(nil, &forward{plain: true}, appendMessage(nil, m, 0, true)))
	f.Add(appendForward(nil, &forward{skip: []string{"a", "b"}}, appendMessage(nil, m, 0, true)))
	f.Add(appendRetained(nil, m, 0))
	m.origin = 1 << 32
	f.Add(appendForward(nil, &forward{plain: true}, appendMessage(nil, m, 0, true)))
	f.Add(appendMoved(nil, &movedSession{id: "x", subs: map[string]fanout.Options{"#": {}}}, 0, true))
	f.Add(appendSentMarks(appendMoved([]byte{1, 1}, &movedSession{id: "x"}, 0, true), 5, []uint64{1, 2, 3}))
	f.Add(appendConnected(nil, "dev", 5))
	f.Add(appendHello(nil, ourFeatures, true))
	f.Add(appendRedirect(nil, "dev", m, 1, true, []uint32{7}, 2, 0, true))
	f.Add(appendRouteDelta(nil, 7, routeEntry{"a/+/#", true}))
	f.Add(appendRouteEntry(appendRouteSetHeader(nil, routeSetHeader{first: true, last: true, seq: 3, digest: 9}), routeEntry{"a/#", false}))
	f.Add(appendRouteDigest(nil, 3, 9))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m message
		var fw forward
		if err := decodeForward(b, 0, &fw, &m); err == nil && (codec.ValidateTopicName(m.topic) != nil || len(fw.skip) > maxSkip) {
			t.Fatalf("forwarded message with topic %q, skipping %d clients", m.topic, len(fw.skip))
		}
		_, _ = decodeRetained(b, 0)
		_, _ = decodeMoved(&wireReader{b: b}, 0)
		if _, e, err := decodeRedirect(b, 0); err == nil && (e.qos > 2 || e.hops > maxRedirectHops) {
			t.Fatalf("redirect at QoS %d after %d hops", e.qos, e.hops)
		}
		if _, present, mv, err := decodeSessionAnswer(b, "p", 0); err == nil && present == 1 && len(mv.before) > maxLanes {
			t.Fatalf("%d lanes of send marks", len(mv.before))
		}
		_, _, _ = decodeRouteDelta(b)
		_, _, _ = decodeRouteSet(b)
		_, _, _ = decodeRouteDigest(b)
		_ = decodeRetainDigest(b, &retainDigest{})
		_ = decodeClaims(b, func(string, int64) {})
		_, _, _ = decodeHello(b)
		_, _, _ = restoreMark("interlink/00/"+string(b), b)
	})
}
